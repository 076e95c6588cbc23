-- surefoot PostgreSQL schema, version 5: a sliding log's entries in a table of their own.
--
-- Until now a sliding_log key kept its whole log in its counters row, as a flat array
-- (t1, c1, t2, c2, ...) that every decision read, copied and wrote back: the cost of a
-- decision grew with the log (issue 14). Now each admission is one row of
-- surefoot_ratelimit_log, (key, total, time, cost) as ratelimit._algorithms.LogEntry,
-- and a decision looks up what it needs through the indexes (O(log n)): the newest
-- entry, the oldest live one (time > now - window) and, when refused, the entry whose
-- running total reaches what must leave; an admission inserts one row and deletes the
-- entries that left the window. Entries are never updated.
--
-- A key's log expires with its newest entry (expires_at = time + window; a limit's key
-- names its window, so every entry of a key has the same); the purge deletes entries a
-- second past their own expiry, in batches, skipping keys whose advisory lock is held.
--
-- No migration can tell a sliding log's counters row from another algorithm's (a log
-- of one entry is two numbers, as a fixed window is), so the logs kept by an earlier
-- surefoot are converted when a decision first meets them, knowing its algorithm
-- (surefoot_sliding_log); the purge deletes those that expire before. The acquire
-- functions keep their names and signatures, so that the processes of the previous
-- surefoot still running during a deploy decide on the same entries; surefoot_decide
-- and surefoot_decide_v4 are no longer called for a sliding log.

CREATE TABLE surefoot_ratelimit_log (
    key text NOT NULL,
    -- The running total of cost admitted under the key, this entry included: strictly
    -- increasing, so that the cost of a run of entries is a difference of two totals.
    total bigint NOT NULL,
    -- Never decreasing along the totals (an admission is logged at the newest entry's
    -- time if the clock stepped back).
    time float8 NOT NULL,
    cost bigint NOT NULL,
    expires_at float8 NOT NULL,
    -- The total of the oldest entry kept when this one was written: no entry of the key
    -- is below its newest entry's, so that deleting those that left the window seeks
    -- past the ones already deleted (whose index entries stay until a vacuum).
    kept_from bigint NOT NULL,
    PRIMARY KEY (key, total)
);
-- The oldest live entry: the first after now - window.
CREATE INDEX surefoot_ratelimit_log_time ON surefoot_ratelimit_log (key, time, total);
CREATE INDEX surefoot_ratelimit_log_expires_at ON surefoot_ratelimit_log (expires_at);

-- ratelimit._algorithms.SlidingLog.decide on the key's entries, with the outputs of
-- surefoot_decide_v4. When allowed, o_state is what surefoot_acquire_v4 writes if the
-- request is admitted: numbers = (time and total of the new entry, then the totals
-- [from, to) of the entries to delete: those that left the window, or all of them;
-- from is NULL when the key has none), expires_at. Totals travel as doubles, exact below 2^53. They go on from an expired
-- log's (the Python reference starts again from 0: only differences of totals count).
CREATE FUNCTION surefoot_sliding_log(
    p_key text, p_now float8, p_cost bigint, p_amount bigint, p_window float8,
    OUT o_allowed boolean, OUT o_remaining bigint, OUT o_reset_after float8,
    OUT o_retry_after float8, OUT o_delay float8, OUT o_available_after float8,
    OUT o_state surefoot_counter
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    w float8 := p_window;
    newest_time float8;
    newest_total bigint;
    newest_expires float8;
    kept_from bigint;
    oldest_time float8;
    oldest_total bigint;
    oldest_cost bigint;
    legacy float8[];
    used bigint := 0;
    total bigint;
    at float8;
BEGIN
    o_delay := 0.0;
    o_retry_after := 0.0;
    o_available_after := 0.0;
    SELECT e.time, e.total, e.expires_at, e.kept_from
    INTO newest_time, newest_total, newest_expires, kept_from
    FROM surefoot_ratelimit_log AS e WHERE e.key = p_key ORDER BY e.total DESC LIMIT 1;
    total := coalesce(newest_total, 0) + p_cost;
    IF newest_expires IS NULL OR newest_expires <= p_now THEN
        -- Expired (or never seen): as None. A log kept by an earlier surefoot in the
        -- counters row is converted now, once: times made never decreasing (an entry
        -- counted while any entry before it is live, as the flat array's prefix scan
        -- did, so the same cost is live at every instant) and entries of no cost
        -- dropped (they counted nothing).
        newest_time := NULL;
        newest_total := NULL;
        DELETE FROM surefoot_ratelimit AS c WHERE c.key = p_key
        RETURNING c.numbers, c.expires_at INTO legacy, newest_expires;
        IF newest_expires > p_now THEN
            DELETE FROM surefoot_ratelimit_log AS e WHERE e.key = p_key;
            INSERT INTO surefoot_ratelimit_log (key, total, time, cost, expires_at, kept_from)
            SELECT p_key, x.total, x.time, x.cost, x.time + w, 0
            FROM (
                SELECT sum(legacy[2 * j]) OVER o AS total, max(legacy[2 * j - 1]) OVER o AS time,
                       legacy[2 * j] AS cost
                FROM generate_series(1, cardinality(legacy) / 2) AS j
                WINDOW o AS (ORDER BY j)
            ) AS x
            WHERE x.cost > 0;
            SELECT e.time, e.total, e.kept_from INTO newest_time, newest_total, kept_from
            FROM surefoot_ratelimit_log AS e WHERE e.key = p_key ORDER BY e.total DESC LIMIT 1;
            total := coalesce(newest_total, 0) + p_cost;
        END IF;
    END IF;
    IF newest_total IS NOT NULL THEN
        SELECT e.time, e.total, e.cost INTO oldest_time, oldest_total, oldest_cost
        FROM surefoot_ratelimit_log AS e
        WHERE e.key = p_key AND e.time > p_now - w ORDER BY e.time, e.total LIMIT 1;
        IF oldest_total IS NOT NULL THEN
            used := newest_total - oldest_total + oldest_cost;
        END IF;
    END IF;
    IF used + p_cost <= p_amount THEN
        o_allowed := true;
        at := CASE WHEN newest_time IS NULL OR newest_time < p_now THEN p_now ELSE newest_time END;
        o_remaining := p_amount - used - p_cost;
        o_reset_after := CASE WHEN at = p_now THEN w ELSE at + w - p_now END;
        -- More is available when the oldest entry (or the new one) leaves the window.
        o_available_after := coalesce(oldest_time, at) + w - p_now;
        o_state := ROW(ARRAY[at, total, kept_from, coalesce(oldest_total, total)], NULL, at + w);
    ELSIF oldest_total IS NULL THEN
        -- Nothing live: the cost exceeds the amount, for good.
        o_allowed := false;
        o_remaining := p_amount;
        o_reset_after := 0.0;
        o_retry_after := 'Infinity';
    ELSE
        o_allowed := false;
        o_remaining := p_amount - used;
        o_reset_after := newest_time + w - p_now;
        o_available_after := oldest_time + w - p_now;
        IF p_cost > p_amount THEN
            o_retry_after := 'Infinity';
        ELSE
            -- Until the entry whose running total reaches the excess leaves the window.
            SELECT e.time + w - p_now INTO o_retry_after
            FROM surefoot_ratelimit_log AS e
            WHERE e.key = p_key AND e.total >= oldest_total - oldest_cost + (used + p_cost - p_amount)
            ORDER BY e.total LIMIT 1;
        END IF;
    END IF;
END
$$;

-- ratelimit._core.plan, as in version 4, but a sliding log decides on its entries
-- (surefoot_sliding_log) and an admission writes one entry and deletes those that left
-- the window. When one request names a sliding log's key twice, the last item that
-- allowed it is the one written, as the last of plan's writes wins; an admission that
-- costs nothing logs nothing.
CREATE OR REPLACE FUNCTION surefoot_acquire_v4(
    p_nows float8[], p_sizes integer[], p_keys text[], p_algorithms text[], p_costs bigint[],
    p_enforce boolean[], p_tokens text[], p_amounts bigint[], p_windows float8[],
    p_capacities bigint[], p_max_waits float8[], p_leases float8[], p_periods text[],
    p_zones text[], p_period_starts float8[], p_period_ends float8[],
    OUT o_admitted boolean[], OUT o_now float8, OUT o_allowed boolean[],
    OUT o_remaining bigint[], OUT o_reset_after float8[], OUT o_retry_after float8[],
    OUT o_delay float8[], OUT o_available_after float8[]
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    lock_id bigint;
    req_now float8;
    first integer := 1;
    last integer;
    admitted boolean;
    written boolean;
    numbers float8[];
    tokens text[];
    period_start float8;
    period_end float8;
    d record;
    s surefoot_counter;
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
    o_available_after := '{}';
    FOR r IN 1..cardinality(p_sizes) LOOP
        req_now := coalesce(p_nows[r], o_now);
        last := first + p_sizes[r] - 1;
        admitted := true;
        states := '{}';
        FOR i IN first..last LOOP
            IF p_algorithms[i] = 'sliding_log' THEN
                SELECT * INTO d FROM surefoot_sliding_log(
                    p_keys[i], req_now, p_costs[i], p_amounts[i], p_windows[i]
                );
            ELSE
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
                SELECT * INTO d FROM surefoot_decide_v4(
                    p_algorithms[i], numbers, tokens, req_now, p_costs[i], p_amounts[i],
                    p_windows[i], p_capacities[i], p_max_waits[i], p_leases[i], p_tokens[i],
                    period_start, period_end
                );
            END IF;
            o_allowed := o_allowed || d.o_allowed;
            o_remaining := o_remaining || d.o_remaining;
            o_reset_after := o_reset_after || d.o_reset_after;
            o_retry_after := o_retry_after || d.o_retry_after;
            o_delay := o_delay || d.o_delay;
            o_available_after := o_available_after || d.o_available_after;
            states := states || d.o_state;
            IF p_enforce[i] AND NOT d.o_allowed THEN
                admitted := false;
            END IF;
        END LOOP;
        IF admitted THEN
            FOR i IN first..last LOOP
                CONTINUE WHEN NOT o_allowed[i];
                s := states[i - first + 1];
                IF p_algorithms[i] <> 'sliding_log' THEN
                    INSERT INTO surefoot_ratelimit AS c (key, numbers, tokens, expires_at)
                    VALUES (p_keys[i], s.numbers, s.tokens, s.expires_at)
                    ON CONFLICT (key) DO UPDATE
                    SET numbers = excluded.numbers, tokens = excluded.tokens,
                        expires_at = excluded.expires_at;
                    CONTINUE;
                END IF;
                written := p_costs[i] > 0;
                FOR j IN i + 1..last LOOP
                    IF p_keys[j] = p_keys[i] AND o_allowed[j] THEN
                        written := false;
                    END IF;
                END LOOP;
                CONTINUE WHEN NOT written;
                IF s.numbers[3] IS NOT NULL THEN
                    DELETE FROM surefoot_ratelimit_log AS e
                    WHERE e.key = p_keys[i] AND e.total >= s.numbers[3]::bigint
                        AND e.total < s.numbers[4]::bigint;
                END IF;
                INSERT INTO surefoot_ratelimit_log (key, total, time, cost, expires_at, kept_from)
                VALUES (p_keys[i], s.numbers[2]::bigint, s.numbers[1], p_costs[i], s.expires_at,
                        s.numbers[4]::bigint);
            END LOOP;
        END IF;
        o_admitted := o_admitted || admitted;
        first := last + 1;
    END LOOP;
END
$$;

-- Version 1's acquire, for processes of a surefoot older than version 4 still running
-- during a deploy: version 4's decisions (which read every state version 1 wrote),
-- without o_available_after, so that every process keeps its logs in entries.
CREATE OR REPLACE FUNCTION surefoot_acquire(
    p_nows float8[], p_sizes integer[], p_keys text[], p_algorithms text[], p_costs bigint[],
    p_enforce boolean[], p_tokens text[], p_amounts bigint[], p_windows float8[],
    p_capacities bigint[], p_max_waits float8[], p_leases float8[], p_periods text[],
    p_zones text[], p_period_starts float8[], p_period_ends float8[],
    OUT o_admitted boolean[], OUT o_now float8, OUT o_allowed boolean[],
    OUT o_remaining bigint[], OUT o_reset_after float8[], OUT o_retry_after float8[],
    OUT o_delay float8[]
)
LANGUAGE sql SET search_path FROM CURRENT AS $$
    SELECT a.o_admitted, a.o_now, a.o_allowed, a.o_remaining, a.o_reset_after,
           a.o_retry_after, a.o_delay
    FROM surefoot_acquire_v4(
        p_nows, p_sizes, p_keys, p_algorithms, p_costs, p_enforce, p_tokens, p_amounts,
        p_windows, p_capacities, p_max_waits, p_leases, p_periods, p_zones, p_period_starts,
        p_period_ends
    ) AS a
$$;

-- Version 3's purge, and then, within the same budget of p_counters rows, the sliding
-- log entries a second past their expiry: then they have left the window for good,
-- however now - window rounds (no decision at a later instant can count them), whether
-- or not their key has newer entries. A key whose advisory lock another transaction
-- holds is skipped, never waited for: no decision on it is under way.
CREATE OR REPLACE FUNCTION surefoot_purge(
    p_now float8, p_records integer, p_counters integer,
    OUT o_records integer, OUT o_counters integer
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_now float8 := coalesce(p_now, extract(epoch FROM clock_timestamp())::float8);
    entries integer;
BEGIN
    DELETE FROM surefoot_idempotency WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM surefoot_idempotency
        WHERE expires_at <= v_now
            AND (owner IS NULL OR pg_try_advisory_xact_lock(surefoot_lock_id('owner:' || owner)))
        LIMIT p_records FOR UPDATE SKIP LOCKED
    ));
    GET DIAGNOSTICS o_records = ROW_COUNT;
    DELETE FROM surefoot_ratelimit WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM surefoot_ratelimit WHERE expires_at <= v_now
        LIMIT p_counters FOR UPDATE SKIP LOCKED
    ));
    GET DIAGNOSTICS o_counters = ROW_COUNT;
    DELETE FROM surefoot_ratelimit_log WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM surefoot_ratelimit_log
        WHERE expires_at < v_now - 1 AND pg_try_advisory_xact_lock(surefoot_lock_id(key))
        LIMIT p_counters - o_counters FOR UPDATE SKIP LOCKED
    ));
    GET DIAGNOSTICS entries = ROW_COUNT;
    o_counters := o_counters + entries;
END
$$;

-- A calendar quota's period, as quota_period computes it: to_timestamp rounds to the
-- microsecond, so an instant less than half a microsecond before midnight came out in
-- the next period; a period lasts 23 hours or more, so a second before that period's
-- start is in the one that holds p_now.
CREATE OR REPLACE FUNCTION surefoot_quota_period(
    p_now float8, p_period text, p_zone text,
    OUT period_start float8, OUT period_end float8
)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path FROM CURRENT AS $$
DECLARE
    unit text := CASE p_period WHEN 'month' THEN 'month' ELSE 'day' END;
    first timestamp := date_trunc(unit, to_timestamp(p_now) AT TIME ZONE p_zone);
BEGIN
    period_start := surefoot_local_epoch(first, p_zone);
    IF p_now < period_start THEN
        first := date_trunc(unit, to_timestamp(period_start - 1) AT TIME ZONE p_zone);
        period_start := surefoot_local_epoch(first, p_zone);
    END IF;
    period_end := surefoot_local_epoch(first + ('1 ' || unit)::interval, p_zone);
END
$$;
