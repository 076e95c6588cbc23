-- surefoot PostgreSQL schema, version 3: per-principal quotas of idempotency records
-- (surefoot.idempotency._core Rule 7; Rule 8 of surefoot.storage.postgres).
--
-- The record of an owned key (idem:<owner>:<digest>) carries its owner. A begin that
-- would create a record, for a request with a quota, counts the owner's live records
-- (the index below) and refuses it over the quota, changing nothing. A batch of begins
-- first takes one advisory lock per owner, with its keys' locks, in one ascending order:
-- two begins of one owner never count at the same time, and batches never deadlock.

ALTER TABLE surefoot_idempotency ADD COLUMN owner text;
CREATE INDEX surefoot_idempotency_owner ON surefoot_idempotency (owner, expires_at)
    INCLUDE (state) WHERE owner IS NOT NULL;

DROP FUNCTION surefoot_begin_batch(
    text[], float8[], text[], text[], float8[], float8[], boolean[]
);
DROP FUNCTION surefoot_begin(text, float8, text, text, float8, float8, boolean);

-- idempotency._core.begin. Answers that change nothing (in progress, replay, unknown,
-- mismatch) come from a plain read; a reservation, a take-over or an expiry to unknown
-- re-reads the row under FOR UPDATE (or inserts it) and decides again.
-- o_verdict: reserved, took_over, in_progress, mismatch, replay, unknown, expired_to_unknown,
-- over_records, over_unknown (then o_limit is the quota and o_free_at the expires_at of
-- the first of the counted records). p_owner is NULL for a key of no owner; a quota of 0
-- is none. The caller holds the owner's advisory lock (surefoot_lock_begins).
CREATE FUNCTION surefoot_begin(
    p_key text, p_now float8, p_fingerprint text, p_token text, p_lease float8, p_ttl float8,
    p_reexecute boolean, p_owner text, p_max_records integer, p_max_unknown integer,
    OUT o_verdict text, OUT o_generation integer, OUT o_lease_expires_at float8,
    OUT o_status integer, OUT o_headers bytea[], OUT o_body bytea, OUT o_now float8,
    OUT o_limit integer, OUT o_free_at float8
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    r surefoot_idempotency%ROWTYPE;
    present boolean;
    observed text;
    locked boolean := false;
    v_records bigint;
    v_unknown bigint;
    v_first float8;
    v_first_unknown float8;
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
        IF observed = 'absent' AND p_owner IS NOT NULL
                AND (p_max_records > 0 OR p_max_unknown > 0) THEN
            -- _core._over_quota: unknown outcomes first, then all live records.
            SELECT count(*), count(*) FILTER (WHERE i.state = 'unknown'), min(i.expires_at),
                   min(i.expires_at) FILTER (WHERE i.state = 'unknown')
            INTO v_records, v_unknown, v_first, v_first_unknown
            FROM surefoot_idempotency AS i WHERE i.owner = p_owner AND i.expires_at > o_now;
            IF p_max_unknown > 0 AND v_unknown >= p_max_unknown THEN
                o_verdict := 'over_unknown';
                o_limit := p_max_unknown;
                o_free_at := v_first_unknown;
                RETURN;
            ELSIF p_max_records > 0 AND v_records >= p_max_records THEN
                o_verdict := 'over_records';
                o_limit := p_max_records;
                o_free_at := v_first;
                RETURN;
            END IF;
        END IF;
        o_generation := CASE WHEN observed = 'lease_expired' THEN r.generation + 1 ELSE 1 END;
        o_lease_expires_at := o_now + p_lease;
        IF present THEN
            UPDATE surefoot_idempotency
            SET state = 'in_flight', fingerprint = p_fingerprint, token = p_token,
                generation = o_generation, lease_expires_at = o_lease_expires_at,
                expires_at = o_now + p_ttl, ttl = p_ttl, status = NULL, headers = NULL,
                body = NULL, owner = p_owner
            WHERE key = p_key;
        ELSE
            INSERT INTO surefoot_idempotency
                (key, state, fingerprint, token, generation, lease_expires_at, expires_at, ttl,
                 owner)
            VALUES (p_key, 'in_flight', p_fingerprint, p_token, 1, o_lease_expires_at,
                    o_now + p_ttl, p_ttl, p_owner)
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

-- The advisory locks of a batch of begins, in ascending lock id order: its keys' (with
-- more than one key, as surefoot_lock_keys) and its owners', so that an owner's records
-- are counted by one transaction at a time (also for begins without a quota, which add
-- records all the same).
CREATE FUNCTION surefoot_lock_begins(p_keys text[], p_owners text[]) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    lock_id bigint;
BEGIN
    FOR lock_id IN
        SELECT DISTINCT id FROM (
            SELECT surefoot_lock_id(k) AS id FROM unnest(p_keys) AS k
            WHERE cardinality(p_keys) > 1
            UNION ALL
            SELECT surefoot_lock_id('owner:' || o) FROM unnest(p_owners) AS o
            WHERE o IS NOT NULL
        ) AS ids ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(lock_id);
    END LOOP;
END
$$;

CREATE FUNCTION surefoot_begin_batch(
    p_keys text[], p_nows float8[], p_fingerprints text[], p_tokens text[], p_leases float8[],
    p_ttls float8[], p_reexecute boolean[], p_owners text[], p_max_records integer[],
    p_max_unknown integer[]
)
RETURNS TABLE (
    o_verdict text, o_generation integer, o_lease_expires_at float8, o_status integer,
    o_headers bytea[], o_body bytea, o_now float8, o_limit integer, o_free_at float8
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM surefoot_lock_begins(p_keys, p_owners);
    FOR i IN 1..cardinality(p_keys) LOOP
        RETURN QUERY SELECT * FROM surefoot_begin(
            p_keys[i], p_nows[i], p_fingerprints[i], p_tokens[i], p_leases[i], p_ttls[i],
            p_reexecute[i], p_owners[i], p_max_records[i], p_max_unknown[i]
        );
    END LOOP;
END
$$;
