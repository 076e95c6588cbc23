-- surefoot PostgreSQL schema, version 1: idempotency records and rate-limit counters.
--
-- Applied by surefoot.storage.postgres.migrate, in one transaction, with search_path set
-- to the target schema (then pg_temp): every name here is unqualified, and every function
-- that reads a table or calls another pins that search_path (SET search_path FROM CURRENT),
-- so it finds them whatever the caller's search_path.
--
-- Each store step is one call of one function below (Rules 2 and 7 of
-- surefoot.storage.postgres).
-- The functions mirror surefoot.idempotency._core and surefoot.ratelimit._algorithms
-- operation for operation, in IEEE doubles like Python's floats, so that they decide
-- exactly as the Python references do (tests/storage/test_postgres_differential.py).
-- "now" is the caller's (p_now) or, when p_now is NULL, the database's clock_timestamp().

-- ---------------------------------------------------------------------------- tables

CREATE TABLE surefoot_idempotency (
    key text PRIMARY KEY,
    -- Creation order, for operators' listings (oldest first).
    seq bigint GENERATED ALWAYS AS IDENTITY,
    state text NOT NULL CHECK (state IN ('in_flight', 'completed', 'unknown')),
    fingerprint text NOT NULL,
    token text NOT NULL,
    generation integer NOT NULL,
    lease_expires_at float8 NOT NULL,
    expires_at float8 NOT NULL,
    ttl float8 NOT NULL,
    status integer,
    -- Flat name, value, name, value... (bytes as sent, latin-1 or not).
    headers bytea[],
    body bytea
);
CREATE INDEX surefoot_idempotency_expires_at ON surefoot_idempotency (expires_at);
CREATE INDEX surefoot_idempotency_seq ON surefoot_idempotency (seq);

-- One row per limit key: the algorithm's state as numbers (and concurrency tokens).
CREATE TABLE surefoot_ratelimit (
    key text PRIMARY KEY,
    numbers float8[] NOT NULL,
    tokens text[],
    expires_at float8 NOT NULL
) WITH (fillfactor = 70);
CREATE INDEX surefoot_ratelimit_expires_at ON surefoot_ratelimit (expires_at);

-- A decided state, kept until the request is known to be admitted.
CREATE TYPE surefoot_counter AS (numbers float8[], tokens text[], expires_at float8);

-- ---------------------------------------------------------------------------- float helpers

-- math.ulp(x) for x >= 0, exactly: read the exponent from the IEEE bits.
CREATE FUNCTION surefoot_ulp(x float8) RETURNS float8
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    b bytea := float8send(x);
    e integer := ((get_byte(b, 0) & 127) << 4) | (get_byte(b, 1) >> 4);
BEGIN
    IF e = 2047 THEN
        RETURN 'Infinity'::float8;
    END IF;
    RETURN power(2::float8, greatest(e, 1) - 1075);
END
$$;

-- ratelimit._algorithms._slack: rounding slack for a timestamp advanced ``steps`` times.
CREATE FUNCTION surefoot_slack(p_now float8, p_steps float8) RETURNS float8
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path FROM CURRENT AS $$
    SELECT (p_steps + 2) * surefoot_ulp(p_now) + 1e-9::float8
$$;

-- Python's x % y for x >= 0 and y > 0, exactly (PostgreSQL has no float modulo, and
-- x - y * floor(x / y) rounds). Whole y: integer and fractional parts apart; otherwise
-- binary long division, each subtraction exact (Sterbenz: a <= r < 2a).
CREATE FUNCTION surefoot_fmod(x float8, y float8) RETURNS float8
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    a float8;
    r float8 := x;
BEGIN
    IF x < y THEN
        RETURN x;
    END IF;
    IF y = trunc(y) AND x < 9007199254740992 THEN
        RETURN (x - trunc(x)) + mod(trunc(x)::bigint, y::bigint)::float8;
    END IF;
    a := y;
    WHILE a * 2 <= r LOOP
        a := a * 2;
    END LOOP;
    WHILE a >= y LOOP
        IF r >= a THEN
            r := r - a;
        END IF;
        a := a / 2;
    END LOOP;
    RETURN r;
END
$$;

-- The first instant whose wall time in p_zone is p_local, as Python's zoneinfo reads a
-- naive time with fold=0: in a repeated hour, its first occurrence (PostgreSQL's AT TIME
-- ZONE takes the second); in a skipped hour, the offset from before the gap (as here).
CREATE FUNCTION surefoot_local_epoch(p_local timestamp, p_zone text) RETURNS float8
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path FROM CURRENT AS $$
DECLARE
    later timestamptz := p_local AT TIME ZONE p_zone;
    a_day_before timestamptz := later - interval '1 day';
    earlier timestamptz := (p_local
        - ((a_day_before AT TIME ZONE p_zone) - (a_day_before AT TIME ZONE 'UTC')))
        AT TIME ZONE 'UTC';
BEGIN
    IF earlier < later AND (earlier AT TIME ZONE p_zone) = p_local THEN
        later := earlier;
    END IF;
    RETURN extract(epoch FROM later)::float8;
END
$$;

-- ratelimit._algorithms.quota_period, computed by the database (server clock).
CREATE FUNCTION surefoot_quota_period(
    p_now float8, p_period text, p_zone text,
    OUT period_start float8, OUT period_end float8
)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path FROM CURRENT AS $$
DECLARE
    unit text := CASE p_period WHEN 'month' THEN 'month' ELSE 'day' END;
    first timestamp := date_trunc(unit, to_timestamp(p_now) AT TIME ZONE p_zone);
BEGIN
    period_start := surefoot_local_epoch(first, p_zone);
    period_end := surefoot_local_epoch(first + ('1 ' || unit)::interval, p_zone);
END
$$;

-- ---------------------------------------------------------------------------- rate limits

-- One algorithm's decide(): ratelimit._algorithms, line for line. p_numbers IS NULL is
-- the state of a key never seen; o_state is the state to store if the request is
-- admitted (or, refused, the state as it was), with its expires_at.
CREATE FUNCTION surefoot_decide(
    p_algorithm text, p_numbers float8[], p_tokens text[], p_now float8, p_cost bigint,
    p_amount bigint, p_window float8, p_capacity bigint, p_max_wait float8, p_lease float8,
    p_token text, p_period_start float8, p_period_end float8,
    OUT o_allowed boolean, OUT o_remaining bigint, OUT o_reset_after float8,
    OUT o_retry_after float8, OUT o_delay float8, OUT o_state surefoot_counter
)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path FROM CURRENT AS $$
DECLARE
    eps constant float8 := 1e-9;
    inf constant float8 := 'Infinity';
    amount float8 := p_amount;
    cost float8 := p_cost;
    capacity float8 := p_capacity;
    w float8 := p_window;
    numbers float8[];
    tokens text[];
    start float8;
    finish float8;
    count float8;
    prev float8;
    curr float8;
    estimate float8;
    rate float8;
    level float8;
    slack float8;
    step float8;
    tat float8;
    new_tat float8;
    tolerance float8;
    used float8;
    excess float8;
    freed float8;
    i integer;
    m integer;
BEGIN
    o_delay := 0.0;
    o_retry_after := 0.0;
    IF p_algorithm IN ('fixed_window', 'quota') THEN
        IF p_algorithm = 'fixed_window' THEN
            start := p_now - surefoot_fmod(p_now, w);
            finish := start + w;
        ELSE
            start := p_period_start;
            finish := p_period_end;
        END IF;
        -- _count_in
        count := CASE WHEN p_numbers IS NOT NULL AND p_numbers[1] = start THEN p_numbers[2]
                      ELSE 0 END;
        o_reset_after := finish - p_now;
        IF count + cost <= amount THEN
            o_allowed := true;
            o_remaining := amount - count - cost;
            count := count + cost;
        ELSE
            o_allowed := false;
            o_remaining := amount - count;
            o_retry_after := CASE WHEN cost <= amount THEN o_reset_after ELSE inf END;
        END IF;
        IF p_algorithm = 'fixed_window' THEN
            o_state := ROW(ARRAY[start, count], NULL, start + w);
        ELSE
            o_state := ROW(ARRAY[start, count, finish], NULL, finish);
        END IF;

    ELSIF p_algorithm = 'sliding_window' THEN
        start := p_now - surefoot_fmod(p_now, w);
        prev := 0;
        curr := 0;
        IF p_numbers IS NOT NULL THEN
            IF p_numbers[1] = start THEN
                prev := p_numbers[2];
                curr := p_numbers[3];
            ELSIF p_numbers[1] = start - w THEN
                prev := p_numbers[3];
            END IF;
        END IF;
        estimate := prev * (1.0::float8 - (p_now - start) / w) + curr;
        IF estimate + cost <= amount + eps THEN
            o_allowed := true;
            o_remaining := greatest(0, floor(amount - estimate - cost + eps));
            o_reset_after := start + 2 * w - p_now;
            curr := curr + cost;
        ELSE
            o_allowed := false;
            o_reset_after := CASE WHEN curr <> 0 THEN start + 2 * w - p_now
                                  ELSE start + w - p_now END;
            o_remaining := greatest(0, floor(amount - estimate + eps));
            IF cost > amount THEN
                o_retry_after := inf;
            ELSIF curr + cost <= amount THEN
                o_retry_after := start + w * (1.0::float8 - (amount - curr - cost) / prev) - p_now;
            ELSE
                o_retry_after := start + w + w * (1.0::float8 - (amount - cost) / curr) - p_now;
            END IF;
            o_retry_after := greatest(o_retry_after, eps);
        END IF;
        o_state := ROW(ARRAY[start, prev, curr], NULL, start + 2 * w);

    ELSIF p_algorithm = 'token_bucket' THEN
        rate := amount / w;
        IF p_numbers IS NULL THEN
            level := capacity;
        ELSE
            level := p_numbers[1] + (p_now - p_numbers[2]) * rate;
            IF level >= capacity - rate * surefoot_slack(p_now, 2) THEN
                level := capacity;
            END IF;
        END IF;
        o_remaining := 0;
        IF level + eps >= cost THEN
            o_allowed := true;
            level := greatest(0.0::float8, level - cost);
        ELSE
            o_allowed := false;
            o_retry_after := CASE WHEN cost <= capacity THEN (cost - level) / rate ELSE inf END;
        END IF;
        o_remaining := floor(level + eps);
        o_reset_after := (capacity - level) / rate;
        o_state := ROW(ARRAY[level, p_now], NULL, p_now + (capacity - level) / rate);

    ELSIF p_algorithm = 'leaky_bucket' THEN
        rate := amount / w;
        level := CASE WHEN p_numbers IS NULL THEN 0.0::float8
                      ELSE p_numbers[1] - (p_now - p_numbers[2]) * rate END;
        IF level <= rate * surefoot_slack(p_now, 2) THEN
            level := 0.0;
        END IF;
        IF level + cost <= capacity + eps THEN
            o_allowed := true;
            level := least(capacity, level + cost);
        ELSE
            o_allowed := false;
            o_retry_after := CASE WHEN cost <= capacity THEN (level + cost - capacity) / rate
                                  ELSE inf END;
        END IF;
        o_remaining := floor(capacity - level + eps);
        o_reset_after := level / rate;
        o_state := ROW(ARRAY[level, p_now], NULL, p_now + level / (amount / w));

    ELSIF p_algorithm = 'leaky_queue' THEN
        step := w / amount;
        start := CASE WHEN p_numbers IS NULL THEN p_now ELSE greatest(p_now, p_numbers[1]) END;
        slack := surefoot_slack(p_now, ceil(p_max_wait / step) + p_cost);
        IF start - p_now <= p_max_wait + slack THEN
            o_allowed := true;
            o_delay := start - p_now;
            finish := start + cost * step;
            o_remaining := greatest(0, floor((p_max_wait - (finish - p_now) + slack) / step) + 1);
            o_reset_after := finish - p_now;
            o_state := ROW(ARRAY[finish], NULL, finish);
        ELSE
            o_allowed := false;
            o_remaining := 0;
            o_reset_after := start - p_now;
            o_retry_after := (start - p_now) - p_max_wait;
            o_state := ROW(ARRAY[start], NULL, start);
        END IF;

    ELSIF p_algorithm = 'gcra' THEN
        step := w / amount;
        tolerance := step * capacity;
        tat := CASE WHEN p_numbers IS NULL THEN p_now ELSE greatest(p_numbers[1], p_now) END;
        new_tat := tat + cost * step;
        slack := surefoot_slack(p_now, p_capacity + p_cost);
        IF p_now + slack >= new_tat - tolerance THEN
            o_allowed := true;
            o_remaining := greatest(0, floor((tolerance - (new_tat - p_now) + slack) / step));
            o_reset_after := new_tat - p_now;
            o_state := ROW(ARRAY[new_tat], NULL, new_tat);
        ELSE
            o_allowed := false;
            o_remaining := greatest(0, floor((tolerance - (tat - p_now) + slack) / step));
            o_retry_after := CASE WHEN cost <= capacity THEN new_tat - tolerance - p_now
                                  ELSE inf END;
            o_reset_after := tat - p_now;
            o_state := ROW(ARRAY[tat], NULL, tat);
        END IF;

    ELSIF p_algorithm = 'sliding_log' THEN
        -- (t1, c1, t2, c2, ...) in time order; entries at or before now - W have left.
        numbers := coalesce(p_numbers, '{}');
        m := cardinality(numbers);
        i := 1;
        WHILE i <= m AND numbers[i] <= p_now - w LOOP
            i := i + 2;
        END LOOP;
        numbers := numbers[i:m];
        m := cardinality(numbers);
        used := 0;
        FOR j IN 1..m / 2 LOOP
            used := used + numbers[2 * j];
        END LOOP;
        IF used + cost <= amount THEN
            o_allowed := true;
            o_remaining := amount - used - cost;
            o_reset_after := w;
            numbers := numbers || ARRAY[p_now, cost];
            m := m + 2;
        ELSE
            o_allowed := false;
            o_remaining := amount - used;
            o_reset_after := CASE WHEN m > 0 THEN numbers[m - 1] + w - p_now ELSE 0.0 END;
            IF cost > amount THEN
                o_retry_after := inf;
            ELSE
                -- Until enough of the oldest entries leave the window.
                excess := used + cost - amount;
                freed := 0;
                i := 1;
                WHILE freed < excess LOOP
                    freed := freed + numbers[i + 1];
                    i := i + 2;
                END LOOP;
                o_retry_after := numbers[i - 2] + w - p_now;
            END IF;
        END IF;
        o_state := ROW(numbers, NULL, CASE WHEN m > 0 THEN numbers[m - 1] + w ELSE 0.0 END);

    ELSIF p_algorithm = 'concurrency' THEN
        -- tokens[i] holds numbers[2i - 1] (lease end) and numbers[2i] (cost); a slot
        -- whose lease has ended is free again.
        numbers := '{}';
        tokens := '{}';
        used := 0;
        FOR j IN 1..coalesce(cardinality(p_tokens), 0) LOOP
            IF p_numbers[2 * j - 1] > p_now THEN
                tokens := tokens || p_tokens[j];
                numbers := numbers || p_numbers[2 * j - 1:2 * j];
                used := used + p_numbers[2 * j];
            END IF;
        END LOOP;
        IF used + cost <= amount THEN
            o_allowed := true;
            o_remaining := amount - used - cost;
            tokens := tokens || p_token;
            numbers := numbers || ARRAY[p_now + p_lease, cost];
        ELSE
            o_allowed := false;
            o_remaining := amount - used;
            o_retry_after := CASE WHEN cost <= amount THEN 1.0 ELSE inf END;
        END IF;
        o_reset_after := 0.0;
        finish := 0.0;
        FOR j IN 1..cardinality(tokens) LOOP
            IF j = 1 OR numbers[2 * j - 1] > finish THEN
                finish := numbers[2 * j - 1];
            END IF;
        END LOOP;
        o_state := ROW(numbers, tokens, finish);

    ELSE
        RAISE EXCEPTION 'surefoot: unknown rate-limit algorithm %', p_algorithm
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- The advisory lock that serialises the steps on one limit key (in this schema).
CREATE FUNCTION surefoot_lock_id(p_key text) RETURNS bigint
LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path FROM CURRENT AS $$
    SELECT hashtextextended(current_schema() || ':' || p_key, 0)
$$;

-- ratelimit._core.plan, atomically, for a batch of requests decided one after the other
-- (request r has the next p_sizes[r] items, and its now is p_nows[r], or the database's
-- clock when NULL). Every key of the batch is locked first (advisory locks, in ascending
-- lock id order, so that concurrent batches never deadlock); each request's items are
-- decided against the states stored before it, and their new states written only if the
-- request is admitted, and only for the items that allowed it. Counters are written
-- with synchronous_commit off (see docs/storage.md).
CREATE FUNCTION surefoot_acquire(
    p_nows float8[], p_sizes integer[], p_keys text[], p_algorithms text[], p_costs bigint[],
    p_enforce boolean[], p_tokens text[], p_amounts bigint[], p_windows float8[],
    p_capacities bigint[], p_max_waits float8[], p_leases float8[], p_periods text[],
    p_zones text[], p_period_starts float8[], p_period_ends float8[],
    OUT o_admitted boolean[], OUT o_now float8, OUT o_allowed boolean[],
    OUT o_remaining bigint[], OUT o_reset_after float8[], OUT o_retry_after float8[],
    OUT o_delay float8[]
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    lock_id bigint;
    req_now float8;
    first integer := 1;
    last integer;
    admitted boolean;
    numbers float8[];
    tokens text[];
    period_start float8;
    period_end float8;
    d record;
    states surefoot_counter[];
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    IF cardinality(p_keys) = 1 THEN
        PERFORM pg_advisory_xact_lock(surefoot_lock_id(p_keys[1]));
    ELSE
        FOR lock_id IN SELECT DISTINCT surefoot_lock_id(k) FROM unnest(p_keys) AS k ORDER BY 1
        LOOP
            PERFORM pg_advisory_xact_lock(lock_id);
        END LOOP;
    END IF;
    -- Read the clock once the keys are ours: decisions on a key see time move forward.
    o_now := extract(epoch FROM clock_timestamp())::float8;
    o_admitted := '{}';
    o_allowed := '{}';
    o_remaining := '{}';
    o_reset_after := '{}';
    o_retry_after := '{}';
    o_delay := '{}';
    FOR r IN 1..cardinality(p_sizes) LOOP
        req_now := coalesce(p_nows[r], o_now);
        last := first + p_sizes[r] - 1;
        admitted := true;
        states := '{}';
        FOR i IN first..last LOOP
            SELECT c.numbers, c.tokens INTO numbers, tokens
            FROM surefoot_ratelimit AS c WHERE c.key = p_keys[i] AND c.expires_at > req_now;
            IF NOT FOUND THEN
                numbers := NULL;
                tokens := NULL;
            END IF;
            period_start := p_period_starts[i];
            period_end := p_period_ends[i];
            IF p_algorithms[i] = 'quota' AND period_start IS NULL THEN
                SELECT q.period_start, q.period_end INTO period_start, period_end
                FROM surefoot_quota_period(req_now, p_periods[i], p_zones[i]) AS q;
            END IF;
            SELECT * INTO d FROM surefoot_decide(
                p_algorithms[i], numbers, tokens, req_now, p_costs[i], p_amounts[i], p_windows[i],
                p_capacities[i], p_max_waits[i], p_leases[i], p_tokens[i], period_start,
                period_end
            );
            o_allowed := o_allowed || d.o_allowed;
            o_remaining := o_remaining || d.o_remaining;
            o_reset_after := o_reset_after || d.o_reset_after;
            o_retry_after := o_retry_after || d.o_retry_after;
            o_delay := o_delay || d.o_delay;
            states := states || d.o_state;
            IF p_enforce[i] AND NOT d.o_allowed THEN
                admitted := false;
            END IF;
        END LOOP;
        IF admitted THEN
            FOR i IN first..last LOOP
                IF o_allowed[i] THEN
                    INSERT INTO surefoot_ratelimit AS c (key, numbers, tokens, expires_at)
                    VALUES (p_keys[i], (states[i - first + 1]).numbers,
                            (states[i - first + 1]).tokens, (states[i - first + 1]).expires_at)
                    ON CONFLICT (key) DO UPDATE
                    SET numbers = excluded.numbers, tokens = excluded.tokens,
                        expires_at = excluded.expires_at;
                END IF;
            END LOOP;
        END IF;
        o_admitted := o_admitted || admitted;
        first := last + 1;
    END LOOP;
END
$$;

-- Concurrency.release: free the slots held under p_token (and any whose lease ended).
CREATE FUNCTION surefoot_release(p_key text, p_token text, p_now float8, OUT o_now float8)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    old_numbers float8[];
    old_tokens text[];
    kept_numbers float8[] := '{}';
    kept_tokens text[] := '{}';
    finish float8 := 0.0;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock(surefoot_lock_id(p_key));
    o_now := coalesce(p_now, extract(epoch FROM clock_timestamp())::float8);
    SELECT c.numbers, c.tokens INTO old_numbers, old_tokens
    FROM surefoot_ratelimit AS c WHERE c.key = p_key AND c.expires_at > o_now;
    IF NOT FOUND OR old_tokens IS NULL THEN
        RETURN;  -- nothing held, or not a concurrency limit's key
    END IF;
    FOR j IN 1..coalesce(cardinality(old_tokens), 0) LOOP
        IF old_numbers[2 * j - 1] > o_now AND old_tokens[j] <> p_token THEN
            kept_tokens := kept_tokens || old_tokens[j];
            kept_numbers := kept_numbers || old_numbers[2 * j - 1:2 * j];
            IF cardinality(kept_tokens) = 1 OR old_numbers[2 * j - 1] > finish THEN
                finish := old_numbers[2 * j - 1];
            END IF;
        END IF;
    END LOOP;
    IF cardinality(kept_tokens) = 0 THEN
        DELETE FROM surefoot_ratelimit WHERE key = p_key;
    ELSE
        UPDATE surefoot_ratelimit
        SET numbers = kept_numbers, tokens = kept_tokens, expires_at = finish
        WHERE key = p_key;
    END IF;
END
$$;

-- ---------------------------------------------------------------------------- idempotency

-- idempotency._core.begin. Answers that change nothing (in progress, replay, unknown,
-- mismatch) come from a plain read; a reservation, a take-over or an expiry to unknown
-- re-reads the row under FOR UPDATE (or inserts it) and decides again.
-- o_verdict: reserved, took_over, in_progress, mismatch, replay, unknown, expired_to_unknown.
CREATE FUNCTION surefoot_begin(
    p_key text, p_now float8, p_fingerprint text, p_token text, p_lease float8, p_ttl float8,
    p_reexecute boolean,
    OUT o_verdict text, OUT o_generation integer, OUT o_lease_expires_at float8,
    OUT o_status integer, OUT o_headers bytea[], OUT o_body bytea, OUT o_now float8
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    r surefoot_idempotency%ROWTYPE;
    present boolean;
    observed text;
    locked boolean := false;
BEGIN
    o_now := coalesce(p_now, extract(epoch FROM clock_timestamp())::float8);
    LOOP
        IF locked THEN
            SELECT * INTO r FROM surefoot_idempotency WHERE key = p_key FOR UPDATE;
        ELSE
            SELECT * INTO r FROM surefoot_idempotency WHERE key = p_key;
        END IF;
        present := FOUND;
        IF NOT present OR o_now >= r.expires_at THEN
            observed := 'absent';
        ELSIF r.state = 'in_flight' AND o_now >= r.lease_expires_at THEN
            observed := 'lease_expired';
        ELSE
            observed := r.state;
        END IF;
        IF observed <> 'absent' AND r.fingerprint <> p_fingerprint THEN
            o_verdict := 'mismatch';
            RETURN;
        ELSIF observed = 'in_flight' THEN
            o_verdict := 'in_progress';
            o_lease_expires_at := r.lease_expires_at;
            RETURN;
        ELSIF observed = 'completed' THEN
            o_verdict := 'replay';
            o_status := r.status;
            o_headers := r.headers;
            o_body := r.body;
            RETURN;
        ELSIF observed = 'unknown' THEN
            o_verdict := 'unknown';
            RETURN;
        ELSIF NOT locked THEN
            locked := true;
            CONTINUE;
        END IF;
        IF observed = 'lease_expired' AND NOT p_reexecute THEN
            UPDATE surefoot_idempotency SET state = 'unknown' WHERE key = p_key;
            o_verdict := 'expired_to_unknown';
            RETURN;
        END IF;
        o_generation := CASE WHEN observed = 'lease_expired' THEN r.generation + 1 ELSE 1 END;
        o_lease_expires_at := o_now + p_lease;
        IF present THEN
            UPDATE surefoot_idempotency
            SET state = 'in_flight', fingerprint = p_fingerprint, token = p_token,
                generation = o_generation, lease_expires_at = o_lease_expires_at,
                expires_at = o_now + p_ttl, ttl = p_ttl, status = NULL, headers = NULL,
                body = NULL
            WHERE key = p_key;
        ELSE
            INSERT INTO surefoot_idempotency
                (key, state, fingerprint, token, generation, lease_expires_at, expires_at, ttl)
            VALUES (p_key, 'in_flight', p_fingerprint, p_token, 1, o_lease_expires_at,
                    o_now + p_ttl, p_ttl)
            ON CONFLICT (key) DO NOTHING;
            IF NOT FOUND THEN
                -- A concurrent begin inserted it first (and committed: the insert waited
                -- for it): decide again on its row, from a plain read.
                locked := false;
                CONTINUE;
            END IF;
        END IF;
        o_verdict := CASE WHEN observed = 'lease_expired' THEN 'took_over' ELSE 'reserved' END;
        RETURN;
    END LOOP;
END
$$;

-- idempotency._core.finish. p_step: complete, release or mark_unknown. o_accepted is
-- NULL (and nothing changes) when completing without a response to keep.
CREATE FUNCTION surefoot_finish(
    p_key text, p_now float8, p_token text, p_step text, p_status integer,
    p_headers bytea[], p_body bytea, OUT o_accepted boolean
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    r surefoot_idempotency%ROWTYPE;
    v_now float8 := coalesce(p_now, extract(epoch FROM clock_timestamp())::float8);
BEGIN
    o_accepted := false;
    SELECT * INTO r FROM surefoot_idempotency WHERE key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    ELSIF v_now >= r.expires_at THEN
        DELETE FROM surefoot_idempotency WHERE key = p_key;
        RETURN;
    ELSIF r.token <> p_token OR r.state NOT IN ('in_flight', 'unknown') THEN
        RETURN;
    ELSIF p_step = 'release' THEN
        DELETE FROM surefoot_idempotency WHERE key = p_key;
    ELSIF p_step = 'complete' AND p_status IS NULL THEN
        o_accepted := NULL;
        RETURN;
    ELSE
        UPDATE surefoot_idempotency
        SET state = CASE p_step WHEN 'complete' THEN 'completed' ELSE 'unknown' END,
            expires_at = v_now + r.ttl, status = p_status, headers = p_headers, body = p_body
        WHERE key = p_key;
    END IF;
    o_accepted := true;
END
$$;

-- Several begins, or several finishes, in one transaction (one commit), one after the
-- other, one result row each, in order. With more than one key, every key is locked first
-- (advisory locks, ascending lock id order) so that batches never deadlock each other on
-- the rows they then lock in request order.
CREATE FUNCTION surefoot_lock_keys(p_keys text[]) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    lock_id bigint;
BEGIN
    IF cardinality(p_keys) > 1 THEN
        FOR lock_id IN SELECT DISTINCT surefoot_lock_id(k) FROM unnest(p_keys) AS k ORDER BY 1
        LOOP
            PERFORM pg_advisory_xact_lock(lock_id);
        END LOOP;
    END IF;
END
$$;

CREATE FUNCTION surefoot_begin_batch(
    p_keys text[], p_nows float8[], p_fingerprints text[], p_tokens text[], p_leases float8[],
    p_ttls float8[], p_reexecute boolean[]
)
RETURNS TABLE (
    o_verdict text, o_generation integer, o_lease_expires_at float8, o_status integer,
    o_headers bytea[], o_body bytea, o_now float8
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM surefoot_lock_keys(p_keys);
    FOR i IN 1..cardinality(p_keys) LOOP
        RETURN QUERY SELECT * FROM surefoot_begin(
            p_keys[i], p_nows[i], p_fingerprints[i], p_tokens[i], p_leases[i], p_ttls[i],
            p_reexecute[i]
        );
    END LOOP;
END
$$;

CREATE FUNCTION surefoot_finish_batch(
    p_keys text[], p_nows float8[], p_tokens text[], p_steps text[], p_statuses integer[],
    p_headers bytea[], p_header_counts integer[], p_bodies bytea[]
)
RETURNS TABLE (o_accepted boolean)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    first integer := 1;
BEGIN
    PERFORM surefoot_lock_keys(p_keys);
    FOR i IN 1..cardinality(p_keys) LOOP
        -- p_headers: every request's flat name, value... list, one after the other.
        RETURN QUERY SELECT * FROM surefoot_finish(
            p_keys[i], p_nows[i], p_tokens[i], p_steps[i], p_statuses[i],
            p_headers[first:first + p_header_counts[i] - 1], p_bodies[i]
        );
        first := first + p_header_counts[i];
    END LOOP;
END
$$;

-- idempotency._core.resolve: an operator settles an unknown or abandoned execution.
CREATE FUNCTION surefoot_resolve(
    p_key text, p_now float8, p_status integer, p_headers bytea[], p_body bytea,
    OUT o_accepted boolean
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    r surefoot_idempotency%ROWTYPE;
    v_now float8 := coalesce(p_now, extract(epoch FROM clock_timestamp())::float8);
BEGIN
    o_accepted := false;
    SELECT * INTO r FROM surefoot_idempotency WHERE key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    ELSIF v_now >= r.expires_at THEN
        DELETE FROM surefoot_idempotency WHERE key = p_key;
    ELSIF r.state = 'unknown' OR (r.state = 'in_flight' AND v_now >= r.lease_expires_at) THEN
        UPDATE surefoot_idempotency
        SET state = 'completed', expires_at = v_now + r.ttl, status = p_status,
            headers = p_headers, body = p_body
        WHERE key = p_key;
        o_accepted := true;
    END IF;
END
$$;

-- idempotency._core.forget: delete whatever is stored; accepted if it was live.
CREATE FUNCTION surefoot_forget(p_key text, p_now float8, OUT o_accepted boolean)
LANGUAGE sql SET search_path FROM CURRENT AS $$
    WITH gone AS (DELETE FROM surefoot_idempotency WHERE key = p_key RETURNING expires_at)
    SELECT coalesce(bool_or(
        coalesce(p_now, extract(epoch FROM clock_timestamp())::float8) < expires_at
    ), false) FROM gone
$$;

-- Delete up to p_records expired records and p_counters expired counters; rows another
-- transaction holds are skipped, never waited for.
CREATE FUNCTION surefoot_purge(
    p_now float8, p_records integer, p_counters integer,
    OUT o_records integer, OUT o_counters integer
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_now float8 := coalesce(p_now, extract(epoch FROM clock_timestamp())::float8);
BEGIN
    DELETE FROM surefoot_idempotency WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM surefoot_idempotency WHERE expires_at <= v_now
        LIMIT p_records FOR UPDATE SKIP LOCKED
    ));
    GET DIAGNOSTICS o_records = ROW_COUNT;
    DELETE FROM surefoot_ratelimit WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM surefoot_ratelimit WHERE expires_at <= v_now
        LIMIT p_counters FOR UPDATE SKIP LOCKED
    ));
    GET DIAGNOSTICS o_counters = ROW_COUNT;
END
$$;
