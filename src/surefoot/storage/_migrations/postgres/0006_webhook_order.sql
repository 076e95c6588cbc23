-- surefoot PostgreSQL schema, version 6: the webhook ordering guard's records.
--
-- One row per (endpoint, object), under surefoot.webhooks' ordering_key (a fixed prefix
-- and a hash: never the raw object id): the newest version processed, who processes an
-- event of the object now (holder, its version holding, its lease until) and when the
-- row expires. surefoot_order_claim and surefoot_order_settle re-state the rules of
-- surefoot.webhooks._order in PL/pgSQL, operation for operation in IEEE doubles (the
-- differential tests hold them to the Python reference). Each takes the key's advisory
-- lock (surefoot_lock_id('order:' || key)) before it reads, so the steps of one object
-- are serialised, and reads the database's clock after it (unless the caller gives the
-- time). Expired rows go with the purge, which skips a key whose lock is taken.

CREATE TABLE surefoot_webhook_order (
    key text PRIMARY KEY,
    newest float8,           -- NULL: no event of the object processed yet
    holder text,             -- NULL: nobody processes one now
    holding float8,
    until float8 NOT NULL,   -- the holder's lease end (meaningless without a holder)
    expires float8 NOT NULL  -- max(last write + retention, until)
);
CREATE INDEX surefoot_webhook_order_expires ON surefoot_webhook_order (expires);

-- _order.claim. o_verdict: proceed, stale or busy; o_newest: newest before the claim;
-- o_until: the claimant's lease end (proceed), the holder's (busy), the row's (stale);
-- o_now: the time decided at.
CREATE FUNCTION surefoot_order_claim(
    p_key text, p_now float8, p_token text, p_version float8, p_lease float8,
    p_retention float8,
    OUT o_verdict text, OUT o_newest float8, OUT o_until float8, OUT o_now float8
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    r surefoot_webhook_order%ROWTYPE;
BEGIN
    PERFORM pg_advisory_xact_lock(surefoot_lock_id('order:' || p_key));
    o_now := coalesce(p_now, extract(epoch FROM clock_timestamp())::float8);
    SELECT * INTO r FROM surefoot_webhook_order WHERE key = p_key;
    o_newest := NULL;
    IF FOUND AND o_now < r.expires THEN
        o_newest := r.newest;
        -- Rule 2: stale first, whoever holds the row; Rule 3: busy while another's lease runs.
        IF r.newest IS NOT NULL AND p_version < r.newest THEN
            o_verdict := 'stale';
            o_until := r.until;
            RETURN;
        END IF;
        IF r.holder IS NOT NULL AND o_now < r.until AND r.holder <> p_token THEN
            o_verdict := 'busy';
            o_until := r.until;
            RETURN;
        END IF;
    END IF;
    o_verdict := 'proceed';
    o_until := o_now + p_lease;
    INSERT INTO surefoot_webhook_order AS t (key, newest, holder, holding, until, expires)
    VALUES (p_key, o_newest, p_token, p_version, o_until, greatest(o_now + p_retention, o_until))
    ON CONFLICT (key) DO UPDATE SET newest = excluded.newest, holder = excluded.holder,
        holding = excluded.holding, until = excluded.until, expires = excluded.expires;
END
$$;

-- _order.settle. o_changed: whether the row was written.
CREATE FUNCTION surefoot_order_settle(
    p_key text, p_now float8, p_token text, p_version float8, p_ok boolean,
    p_retention float8,
    OUT o_changed boolean
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    r surefoot_webhook_order%ROWTYPE;
    v_now float8;
    v_newest float8;
BEGIN
    PERFORM pg_advisory_xact_lock(surefoot_lock_id('order:' || p_key));
    v_now := coalesce(p_now, extract(epoch FROM clock_timestamp())::float8);
    SELECT * INTO r FROM surefoot_webhook_order WHERE key = p_key;
    o_changed := true;
    IF NOT FOUND OR v_now >= r.expires THEN
        IF NOT p_ok THEN
            o_changed := false;
            RETURN;
        END IF;
        -- Rule 5: the row expired while the event was processed; its work counts.
        INSERT INTO surefoot_webhook_order AS t (key, newest, holder, holding, until, expires)
        VALUES (p_key, p_version, NULL, NULL, v_now, v_now + p_retention)
        ON CONFLICT (key) DO UPDATE SET newest = excluded.newest, holder = NULL,
            holding = NULL, until = excluded.until, expires = excluded.expires;
        RETURN;
    END IF;
    v_newest := r.newest;
    IF p_ok AND (v_newest IS NULL OR p_version > v_newest) THEN
        v_newest := p_version;
    END IF;
    IF r.holder IS NOT NULL AND r.holder = p_token THEN
        UPDATE surefoot_webhook_order SET newest = v_newest, holder = NULL, holding = NULL,
            until = v_now, expires = v_now + p_retention
        WHERE key = p_key;
        RETURN;
    END IF;
    IF v_newest IS NOT DISTINCT FROM r.newest THEN
        o_changed := false;  -- fenced out, nothing to add
        RETURN;
    END IF;
    UPDATE surefoot_webhook_order SET newest = v_newest,
        expires = greatest(v_now + p_retention, r.until)
    WHERE key = p_key;
END
$$;

-- Version 5's purge, and then, within the same budget of p_records rows, the expired
-- ordering rows of keys whose advisory lock is free (no step on them is under way).
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
    DELETE FROM surefoot_webhook_order WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM surefoot_webhook_order
        WHERE expires <= v_now AND pg_try_advisory_xact_lock(surefoot_lock_id('order:' || key))
        LIMIT p_records - o_records FOR UPDATE SKIP LOCKED
    ));
    GET DIAGNOSTICS entries = ROW_COUNT;
    o_records := o_records + entries;
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
