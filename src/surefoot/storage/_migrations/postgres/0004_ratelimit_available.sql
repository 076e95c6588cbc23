-- surefoot PostgreSQL schema, version 4: RateLimit's t.
--
-- Decisions also say when more quota is available (ratelimit._algorithms, Rule 4:
-- o_available_after), and a sliding window keeps the time of its last admission, after
-- which a whole window forgets its counts (Rule 5). The functions of version 1 stay, so
-- that the processes of the previous surefoot still running during a deploy keep
-- deciding; they read a sliding window's fourth number as nothing, and these read a state
-- of three numbers as the window's end.

-- ratelimit._algorithms' decide(), with o_available_after (see surefoot_decide).
CREATE FUNCTION surefoot_decide_v4(
    p_algorithm text, p_numbers float8[], p_tokens text[], p_now float8, p_cost bigint,
    p_amount bigint, p_window float8, p_capacity bigint, p_max_wait float8, p_lease float8,
    p_token text, p_period_start float8, p_period_end float8,
    OUT o_allowed boolean, OUT o_remaining bigint, OUT o_reset_after float8,
    OUT o_retry_after float8, OUT o_delay float8, OUT o_available_after float8,
    OUT o_state surefoot_counter
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
    seen float8;
    last float8;
    quiet float8;
    target float8;
    at float8;
    i integer;
    m integer;
BEGIN
    o_delay := 0.0;
    o_retry_after := 0.0;
    o_available_after := 0.0;
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
            o_available_after := o_reset_after;
        ELSE
            o_allowed := false;
            o_remaining := amount - count;
            o_retry_after := CASE WHEN cost <= amount THEN o_reset_after ELSE inf END;
            -- Nothing counted (only a cost above the amount was refused): nothing to come back.
            o_available_after := CASE WHEN count <> 0 THEN o_reset_after ELSE 0.0 END;
        END IF;
        IF p_algorithm = 'fixed_window' THEN
            o_state := ROW(ARRAY[start, count], NULL, start + w);
        ELSE
            o_state := ROW(ARRAY[start, count, finish], NULL, finish);
        END IF;

    ELSIF p_algorithm = 'sliding_window' THEN
        -- numbers: window start, previous count, current count, last admission (a state
        -- kept by surefoot_decide has no last admission: its window's end bounds it).
        start := p_now - surefoot_fmod(p_now, w);
        prev := 0;
        curr := 0;
        last := '-Infinity';
        IF p_numbers IS NOT NULL THEN
            seen := coalesce(p_numbers[4], p_numbers[1] + w);
            IF seen + w > p_now THEN
                IF p_numbers[1] = start THEN
                    prev := p_numbers[2];
                    curr := p_numbers[3];
                    last := seen;
                ELSIF p_numbers[1] = start - w THEN
                    prev := p_numbers[3];
                    last := seen;
                END IF;
            END IF;
        END IF;
        estimate := prev * (1.0::float8 - (p_now - start) / w) + curr;
        IF estimate + cost <= amount + eps THEN
            o_allowed := true;
            o_remaining := greatest(0, floor(amount - estimate - cost + eps));
            last := greatest(last, p_now);
            quiet := last + w;
            o_reset_after := quiet - p_now;
            curr := curr + cost;
        ELSE
            o_allowed := false;
            o_remaining := greatest(0, floor(amount - estimate + eps));
            IF last = '-Infinity' THEN
                -- Nothing counts: only a cost above the amount is refused, for good.
                o_reset_after := 0.0;
                o_retry_after := inf;
            ELSE
                quiet := last + w;
                o_reset_after := quiet - p_now;
                IF cost > amount THEN
                    o_retry_after := inf;
                ELSE
                    IF curr + cost <= amount THEN
                        at := start + w * (1.0::float8 - (amount - curr - cost) / prev);
                    ELSE
                        at := start + w + w * (1.0::float8 - (amount - cost) / curr);
                    END IF;
                    o_retry_after := greatest(least(at, quiet) - p_now, eps);
                END IF;
            END IF;
        END IF;
        -- ratelimit._algorithms._sliding_available, on the counts the decision leaves.
        IF last <> '-Infinity' AND o_remaining < amount THEN
            target := amount - o_remaining - 1;
            IF curr <= target THEN
                at := start + w * (1.0::float8 - (target - curr) / prev);
            ELSE
                at := start + w + w * (1.0::float8 - target / curr);
            END IF;
            o_available_after := greatest(least(at, quiet) - p_now, eps);
        END IF;
        o_state := ROW(ARRAY[start, prev, curr, last], NULL, last + w);

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
        IF o_remaining < capacity THEN
            o_available_after := (o_remaining + 1 - level) / rate;
        END IF;
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
        IF o_remaining < capacity THEN
            o_available_after := (level - (capacity - o_remaining - 1)) / rate;
        END IF;
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
            o_available_after := finish - p_now - p_max_wait + o_remaining * step;
            o_state := ROW(ARRAY[finish], NULL, finish);
        ELSE
            o_allowed := false;
            o_remaining := 0;
            o_reset_after := start - p_now;
            o_retry_after := (start - p_now) - p_max_wait;
            o_available_after := o_retry_after;
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
            IF o_remaining < capacity THEN
                o_available_after := new_tat - tolerance + (o_remaining + 1) * step - p_now;
            END IF;
            o_state := ROW(ARRAY[new_tat], NULL, new_tat);
        ELSE
            o_allowed := false;
            o_remaining := greatest(0, floor((tolerance - (tat - p_now) + slack) / step));
            o_retry_after := CASE WHEN cost <= capacity THEN new_tat - tolerance - p_now
                                  ELSE inf END;
            o_reset_after := tat - p_now;
            IF o_remaining < capacity THEN
                o_available_after := tat - tolerance + (o_remaining + 1) * step - p_now;
            END IF;
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
            -- More is available when the oldest entry leaves the window.
            o_available_after := numbers[1] + w - p_now;
        ELSE
            o_allowed := false;
            o_remaining := amount - used;
            o_reset_after := CASE WHEN m > 0 THEN numbers[m - 1] + w - p_now ELSE 0.0 END;
            o_available_after := CASE WHEN m > 0 THEN numbers[1] + w - p_now ELSE 0.0 END;
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

-- ratelimit._core.plan with o_available_after (see surefoot_acquire).
CREATE FUNCTION surefoot_acquire_v4(
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
    o_available_after := '{}';
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
            SELECT * INTO d FROM surefoot_decide_v4(
                p_algorithms[i], numbers, tokens, req_now, p_costs[i], p_amounts[i], p_windows[i],
                p_capacities[i], p_max_waits[i], p_leases[i], p_tokens[i], period_start,
                period_end
            );
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
