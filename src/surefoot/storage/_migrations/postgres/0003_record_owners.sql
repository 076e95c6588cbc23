-- surefoot PostgreSQL schema, version 3: per-principal quotas of idempotency records
-- (surefoot.idempotency._core Rule 7; Rule 8 of surefoot.storage.postgres).
--
-- The record of an owned key (idem:<owner>:<digest>, surefoot_owner) carries its owner,
-- and surefoot_owners counts each owner's rows, and those of unknown outcome, through
-- triggers, so that a begin reads its owner's usage in one row. Every step that writes
-- an owner's rows first takes the owner's advisory lock (surefoot_lock_writes: with its
-- keys' locks, in one ascending order; the purge only tries it and skips owners it cannot
-- have), so an owner's count row is written by one transaction at a time and no two
-- transactions ever wait on it; two begins of one owner never count at the same time.
-- The counts include expired rows not deleted yet: a begin that finds its owner at a
-- quota deletes the owner's expired rows (the triggers count them out) and reads again.

ALTER TABLE surefoot_idempotency ADD COLUMN owner text;
CREATE INDEX surefoot_idempotency_owner ON surefoot_idempotency (owner, expires_at)
    WHERE owner IS NOT NULL;
CREATE INDEX surefoot_idempotency_owner_unknown ON surefoot_idempotency (owner, expires_at)
    WHERE owner IS NOT NULL AND state = 'unknown';

CREATE TABLE surefoot_owners (
    owner text PRIMARY KEY,
    records bigint NOT NULL,  -- rows of the owner, expired ones not yet deleted included
    unknown bigint NOT NULL   -- of them, in state 'unknown'
);

-- The owner of a store key: surefoot.idempotency._core.key_owner, the same pattern.
CREATE FUNCTION surefoot_owner(p_key text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (regexp_match(p_key, '^idem:([0-9a-f]{20}):[0-9a-f]{40}$'))[1]
$$;

CREATE FUNCTION surefoot_owners_count() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.owner IS NOT NULL THEN
        UPDATE surefoot_owners
        SET records = records - 1, unknown = unknown - (OLD.state = 'unknown')::int
        WHERE owner = OLD.owner;
        DELETE FROM surefoot_owners WHERE owner = OLD.owner AND records <= 0;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.owner IS NOT NULL THEN
        -- No other transaction writes this owner's row (its lock): no conflict to handle.
        UPDATE surefoot_owners
        SET records = records + 1, unknown = unknown + (NEW.state = 'unknown')::int
        WHERE owner = NEW.owner;
        IF NOT FOUND THEN
            INSERT INTO surefoot_owners VALUES (NEW.owner, 1, (NEW.state = 'unknown')::int);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER surefoot_owners_insert AFTER INSERT ON surefoot_idempotency
    FOR EACH ROW WHEN (NEW.owner IS NOT NULL) EXECUTE FUNCTION surefoot_owners_count();
CREATE TRIGGER surefoot_owners_delete AFTER DELETE ON surefoot_idempotency
    FOR EACH ROW WHEN (OLD.owner IS NOT NULL) EXECUTE FUNCTION surefoot_owners_count();
CREATE TRIGGER surefoot_owners_update AFTER UPDATE OF state, owner ON surefoot_idempotency
    FOR EACH ROW WHEN (
        (OLD.state = 'unknown') IS DISTINCT FROM (NEW.state = 'unknown')
        OR OLD.owner IS DISTINCT FROM NEW.owner
    ) EXECUTE FUNCTION surefoot_owners_count();

-- The advisory locks of a step that writes the rows of p_keys, in ascending lock id
-- order: the keys' (with more than one key, as surefoot_lock_keys) and their owners'.
CREATE FUNCTION surefoot_lock_writes(p_keys text[]) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    lock_id bigint;
BEGIN
    FOR lock_id IN
        SELECT DISTINCT id FROM (
            SELECT surefoot_lock_id(k) AS id FROM unnest(p_keys) AS k
            WHERE cardinality(p_keys) > 1
            UNION ALL
            SELECT surefoot_lock_id('owner:' || surefoot_owner(k)) FROM unnest(p_keys) AS k
            WHERE surefoot_owner(k) IS NOT NULL
        ) AS ids ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(lock_id);
    END LOOP;
END
$$;

DROP FUNCTION surefoot_begin_batch(
    text[], float8[], text[], text[], float8[], float8[], boolean[]
);
DROP FUNCTION surefoot_begin(text, float8, text, text, float8, float8, boolean);

-- idempotency._core.begin. Answers that change nothing (in progress, replay, unknown,
-- mismatch) come from a plain read; a reservation, a take-over or an expiry to unknown
-- re-reads the row under FOR UPDATE (or inserts it) and decides again.
-- o_verdict: reserved, took_over, in_progress, mismatch, replay, unknown, expired_to_unknown,
-- over_records, over_unknown (then o_limit is the quota and o_free_at the expires_at of
-- the first of the counted records). A quota of 0 is none. The caller holds the locks of
-- surefoot_lock_writes.
CREATE FUNCTION surefoot_begin(
    p_key text, p_now float8, p_fingerprint text, p_token text, p_lease float8, p_ttl float8,
    p_reexecute boolean, p_max_records integer, p_max_unknown integer,
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
    v_owner text := surefoot_owner(p_key);
    v_records bigint;
    v_unknown bigint;
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
        IF observed = 'absent' AND v_owner IS NOT NULL
                AND (p_max_records > 0 OR p_max_unknown > 0) THEN
            -- _core._over_quota: unknown outcomes first, then all live records.
            SELECT o.records, o.unknown INTO v_records, v_unknown
            FROM surefoot_owners AS o WHERE o.owner = v_owner;
            IF (p_max_records > 0 AND v_records >= p_max_records)
                    OR (p_max_unknown > 0 AND v_unknown >= p_max_unknown) THEN
                -- The counts include expired rows (this key's too, if present): drop the
                -- owner's, and count again.
                DELETE FROM surefoot_idempotency AS i
                WHERE i.owner = v_owner AND i.expires_at <= o_now;
                present := false;
                SELECT o.records, o.unknown INTO v_records, v_unknown
                FROM surefoot_owners AS o WHERE o.owner = v_owner;
            END IF;
            IF p_max_unknown > 0 AND v_unknown >= p_max_unknown THEN
                o_verdict := 'over_unknown';
                o_limit := p_max_unknown;
                SELECT min(i.expires_at) INTO o_free_at FROM surefoot_idempotency AS i
                WHERE i.owner = v_owner AND i.state = 'unknown';
                RETURN;
            ELSIF p_max_records > 0 AND v_records >= p_max_records THEN
                o_verdict := 'over_records';
                o_limit := p_max_records;
                SELECT min(i.expires_at) INTO o_free_at FROM surefoot_idempotency AS i
                WHERE i.owner = v_owner;
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
                body = NULL, owner = v_owner
            WHERE key = p_key;
        ELSE
            INSERT INTO surefoot_idempotency
                (key, state, fingerprint, token, generation, lease_expires_at, expires_at, ttl,
                 owner)
            VALUES (p_key, 'in_flight', p_fingerprint, p_token, 1, o_lease_expires_at,
                    o_now + p_ttl, p_ttl, v_owner)
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

CREATE FUNCTION surefoot_begin_batch(
    p_keys text[], p_nows float8[], p_fingerprints text[], p_tokens text[], p_leases float8[],
    p_ttls float8[], p_reexecute boolean[], p_max_records integer[], p_max_unknown integer[]
)
RETURNS TABLE (
    o_verdict text, o_generation integer, o_lease_expires_at float8, o_status integer,
    o_headers bytea[], o_body bytea, o_now float8, o_limit integer, o_free_at float8
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM surefoot_lock_writes(p_keys);
    FOR i IN 1..cardinality(p_keys) LOOP
        RETURN QUERY SELECT * FROM surefoot_begin(
            p_keys[i], p_nows[i], p_fingerprints[i], p_tokens[i], p_leases[i], p_ttls[i],
            p_reexecute[i], p_max_records[i], p_max_unknown[i]
        );
    END LOOP;
END
$$;

-- The other steps that write records take the owners' locks too (same signatures as in
-- 0001_initial, which took the keys' only).
CREATE OR REPLACE FUNCTION surefoot_finish_batch(
    p_keys text[], p_nows float8[], p_tokens text[], p_steps text[], p_statuses integer[],
    p_headers bytea[], p_header_counts integer[], p_bodies bytea[]
)
RETURNS TABLE (o_accepted boolean)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    first integer := 1;
BEGIN
    PERFORM surefoot_lock_writes(p_keys);
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

CREATE OR REPLACE FUNCTION surefoot_resolve(
    p_key text, p_now float8, p_status integer, p_headers bytea[], p_body bytea,
    OUT o_accepted boolean
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    r surefoot_idempotency%ROWTYPE;
    v_now float8;
BEGIN
    PERFORM surefoot_lock_writes(ARRAY[p_key]);
    v_now := coalesce(p_now, extract(epoch FROM clock_timestamp())::float8);
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

DROP FUNCTION surefoot_forget(text, float8);
CREATE FUNCTION surefoot_forget(p_key text, p_now float8, OUT o_accepted boolean)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_expires_at float8;
BEGIN
    PERFORM surefoot_lock_writes(ARRAY[p_key]);
    DELETE FROM surefoot_idempotency WHERE key = p_key RETURNING expires_at INTO v_expires_at;
    o_accepted := coalesce(
        coalesce(p_now, extract(epoch FROM clock_timestamp())::float8) < v_expires_at, false
    );
END
$$;

-- Delete up to p_records expired records and p_counters expired counters; rows another
-- transaction holds, and records of an owner whose lock another transaction holds, are
-- skipped, never waited for.
CREATE OR REPLACE FUNCTION surefoot_purge(
    p_now float8, p_records integer, p_counters integer,
    OUT o_records integer, OUT o_counters integer
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_now float8 := coalesce(p_now, extract(epoch FROM clock_timestamp())::float8);
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
END
$$;
