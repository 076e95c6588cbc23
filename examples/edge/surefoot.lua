-- surefoot.lua: HAProxy asks surefoot's decision service (`surefoot decide`) whether a
-- request may go on, before it is forwarded. HAProxy 2.6 or newer (core.httpclient).
--
-- Load it in `global` with `lua-load /path/to/surefoot.lua`, then in a frontend:
--
--     http-request lua.surefoot_decide <decide-url> <credential-headers>
--
-- <decide-url> is the /decide endpoint by address: in haproxy.cfg.template, the local
-- `listen surefoot_decide` section in front of the decision services (health checks,
-- timeouts, load balancing), for example http://127.0.0.1:8091/decide (HAProxy's HTTP
-- client resolves no names without a `resolvers` section). <credential-headers> is a
-- comma-separated list of the request headers that carry credentials: the policy file's
-- `[identity] credential_headers`, `authorization,x-api-key` by default.
--
-- Per request the action sends `GET <decide-url>` with only these headers:
--   X-Original-Method   the client's method
--   X-Original-URI      the path and query as the client sent them (`pathq`)
--   X-Forwarded-For     the client's address as HAProxy sees it (`src`): one address,
--                       never the client's own X-Forwarded-For, so a client cannot choose
--                       the address it is counted as
--   X-Request-Id        HAProxy's unique id of the request (`unique-id-format`), if any:
--                       the decision service adopts it from a trusted proxy
--   each credential header, every occurrence as the client sent it (the decision service
--                       refuses ambiguous credentials as the gateway does)
--   X-HTTP-Method-Override, X-Method-Override, X-HTTP-Method, as the client sent them:
--                       the decision service refuses them (400) unless
--                       `[server] allow_method_override`
-- The client's body never leaves HAProxy.
--
-- It records the answer in transaction variables, and the frontend's rules act on them
-- (see haproxy.cfg.template):
--   txn.surefoot_verdict           "allow", "refuse" or "unavailable"
--   txn.surefoot_status            the refusal's status: 400, 429 or 503 (int)
--   txn.surefoot_problem           the refusal's RFC 9457 problem document (the body)
--   txn.surefoot_retry_after       Retry-After
--   txn.surefoot_request_id        X-Request-Id of the refusal (the problem's request_id)
--   txn.surefoot_ratelimit         RateLimit
--   txn.surefoot_ratelimit_policy  RateLimit-Policy
--   txn.surefoot_x_ratelimit_limit, _remaining, _reset
--                                  X-RateLimit-* (when `legacy_headers = true`)
-- A variable is set only when the decision service sent that field.
--
-- Rule 1: "allow" is a 2xx; "refuse" is a 400, 429 or 503 problem document
--         (application/problem+json): the decision service decided, the client gets it.
--         Anything else (no connection, a timeout, another status, a body that is not a
--         problem, an error in this script) is "unavailable", and the frontend fails open
--         or closed as configured; "unavailable" also sets the 503 store_unavailable
--         problem (catalogue entry, default type base) that a closed frontend answers.
-- Rule 2: a decision is bounded in time: by the `listen surefoot_decide` timeouts
--         (connect 500 ms, answer 1 s: then 504, "unavailable"), and by TIMEOUT_MS on
--         the HTTP client itself should <decide-url> name the service directly. HAProxy
--         2.6 does not count the wait against the Lua session timeout: without these,
--         a decision service that accepts and never answers would hold the request.

local TIMEOUT_MS = 2000

-- The refusals the frontend answers with `http-request return status <code>`.
local RELAYED = { [400] = true, [429] = true, [503] = true }

-- Answer fields copied to transaction variables: header name -> variable.
local FIELDS = {
    ["ratelimit"] = "txn.surefoot_ratelimit",
    ["ratelimit-policy"] = "txn.surefoot_ratelimit_policy",
    ["x-ratelimit-limit"] = "txn.surefoot_x_ratelimit_limit",
    ["x-ratelimit-remaining"] = "txn.surefoot_x_ratelimit_remaining",
    ["x-ratelimit-reset"] = "txn.surefoot_x_ratelimit_reset",
}
local REFUSAL_FIELDS = {
    ["retry-after"] = "txn.surefoot_retry_after",
    ["x-request-id"] = "txn.surefoot_request_id",
}

-- The problem a closed frontend answers while the decision service is unavailable:
-- surefoot's `store_unavailable` (docs/errors.md), as the gateway answers when its
-- rate-limit store cannot be reached and the policy fails closed.
local UNAVAILABLE_PROBLEM = '{"type":"https://surefoot.dev/problems/store-unavailable",'
    .. '"title":"Service temporarily unavailable","status":503,'
    .. '"detail":"The service could not reach its state store, so nothing was executed. '
    .. 'Retry the same request (with the same idempotency key) in 1 second.",'
    .. '"code":"store_unavailable","request_id":"%s","retry_after":1}'

-- The values of a header table from HAProxy (indexed from 0 or from 1), in order.
local function values(field)
    local out = {}
    if field == nil then
        return out
    end
    local i = field[0] ~= nil and 0 or 1
    while field[i] ~= nil do
        out[#out + 1] = field[i]
        i = i + 1
    end
    return out
end

-- One header of an answer: its values joined as one list field.
local function header(headers, name)
    local found = values(headers[name])
    if #found == 0 then
        return nil
    end
    return table.concat(found, ", ")
end

-- The method-override headers, always forwarded: the decision must see them.
local OVERRIDES = { "x-http-method-override", "x-method-override", "x-http-method" }

local credential_lists = {}

-- "authorization,x-api-key" -> { "authorization", "x-api-key" }, parsed once per list.
local function credential_names(list)
    local names = credential_lists[list]
    if names == nil then
        names = {}
        for name in string.gmatch(list, "[^,%s]+") do
            names[#names + 1] = string.lower(name)
        end
        credential_lists[list] = names
    end
    return names
end

-- A JSON string's content for an id HAProxy made (printable ASCII expected).
local function json_text(text)
    return (string.gsub(text, '[%c"\\]', ""))
end

local function request_headers(txn, credentials)
    local original = txn.http:req_get_headers()
    local headers = {
        ["x-original-method"] = { txn.f:method() },
        ["x-original-uri"] = { txn.f:pathq() },
        ["x-forwarded-for"] = { txn.f:src() },
    }
    local id = txn.f:unique_id()
    if id ~= nil and id ~= "" then
        headers["x-request-id"] = { id }
    end
    for _, list in ipairs({ credential_names(credentials), OVERRIDES }) do
        for _, name in ipairs(list) do
            local given = values(original[name])
            if #given > 0 then
                headers[name] = given
            end
        end
    end
    return headers
end

local function record(txn, answer, fields)
    for name, var in pairs(fields) do
        local value = header(answer.headers, name)
        if value ~= nil then
            txn:set_var(var, value)
        end
    end
end

-- Asks the decision service and records its verdict (Rule 1); raises on a script error.
local function ask(txn, url, credentials)
    local answer = core.httpclient():get({
        url = url,
        headers = request_headers(txn, credentials),
        timeout = TIMEOUT_MS,
    })
    local status = answer and tonumber(answer.status) or 0
    if status >= 200 and status < 300 then
        record(txn, answer, FIELDS)
        return "allow"
    end
    local kind = answer and header(answer.headers or {}, "content-type") or ""
    local problem = string.find(string.lower(kind), "application/problem+json", 1, true) == 1
    if RELAYED[status] and problem and answer.body ~= nil and answer.body ~= "" then
        record(txn, answer, FIELDS)
        record(txn, answer, REFUSAL_FIELDS)
        txn:set_var("txn.surefoot_status", status)
        txn:set_var("txn.surefoot_problem", answer.body)
        return "refuse"
    end
    return "unavailable", "answered " .. tostring(status)
end

local function surefoot_decide(txn, url, credentials)
    local done, verdict, why = pcall(ask, txn, url, credentials)
    if not done then
        verdict, why = "unavailable", tostring(verdict)
    end
    if verdict == "unavailable" then
        local id = json_text(txn.f:unique_id() or "")
        if id == "" then
            id = string.format("%08x%08x", txn.f:rand(0x7fffffff), txn.f:rand(0x7fffffff))
        end
        txn:set_var("txn.surefoot_status", 503)
        txn:set_var("txn.surefoot_problem", string.format(UNAVAILABLE_PROBLEM, id))
        txn:set_var("txn.surefoot_retry_after", "1")
        txn:set_var("txn.surefoot_request_id", id)
        txn:Warning("surefoot: the decision service is unavailable (" .. tostring(why) .. ")")
    end
    txn:set_var("txn.surefoot_verdict", verdict)
end

core.register_action("surefoot_decide", { "http-req" }, surefoot_decide, 2)
