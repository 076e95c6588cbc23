-- surefoot PostgreSQL schema, version 7: boards (surefoot.metrics' BoardStore).
--
-- One row per (board, slot): the slot's value and when it expires. surefoot_board_write
-- sets a slot (a claim: only if it has no live value) under the board's advisory lock
-- (surefoot_lock_id('board:' || board)), so that the count of the board's live slots
-- and the write are one step: concurrent claims of one slot set it once, and a board
-- never holds more live slots than the caller's bound (p_max). It reads the database's
-- clock after the lock (unless the caller gives the time) and keeps the slot for
-- expires_at - now seconds of that clock. Reads and deletes are plain statements. An
-- expired row counts for nothing, is overwritten by the next write of its slot, and goes
-- with the purge.

CREATE TABLE surefoot_board (
    board text NOT NULL,
    slot text NOT NULL,
    value bytea NOT NULL,
    expires_at float8 NOT NULL,
    PRIMARY KEY (board, slot)
);
CREATE INDEX surefoot_board_expires_at ON surefoot_board (expires_at);
-- A board's live slots, counted by each new slot's write.
CREATE INDEX surefoot_board_live ON surefoot_board (board, expires_at);

-- Set a slot. p_time: the time to decide at (NULL: the database's clock); p_now and
-- p_expires_at: the caller's now and the slot's expiry on the caller's clock.
-- o_verdict: 'set', 'live' (a claim of a live slot: nothing written) or 'full' (a new
-- slot on a board of p_max live slots: nothing written).
CREATE FUNCTION surefoot_board_write(
    p_board text, p_slot text, p_value bytea, p_time float8, p_now float8,
    p_expires_at float8, p_claim boolean, p_max integer,
    OUT o_verdict text
)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_now float8;
    v_old float8;
BEGIN
    PERFORM pg_advisory_xact_lock(surefoot_lock_id('board:' || p_board));
    v_now := coalesce(p_time, extract(epoch FROM clock_timestamp())::float8);
    SELECT expires_at INTO v_old FROM surefoot_board WHERE board = p_board AND slot = p_slot;
    IF FOUND AND v_now < v_old THEN
        IF p_claim THEN
            o_verdict := 'live';
            RETURN;
        END IF;
    ELSIF (SELECT count(*) FROM surefoot_board WHERE board = p_board AND expires_at > v_now)
            >= p_max THEN
        o_verdict := 'full';
        RETURN;
    END IF;
    INSERT INTO surefoot_board AS t (board, slot, value, expires_at)
    VALUES (
        p_board, p_slot, p_value,
        CASE WHEN p_time IS NULL THEN v_now + (p_expires_at - p_now) ELSE p_expires_at END
    )
    ON CONFLICT (board, slot) DO UPDATE SET value = excluded.value,
        expires_at = excluded.expires_at;
    o_verdict := 'set';
END
$$;

-- Version 6's purge, and then, within the same budget of p_records rows, the expired
-- board slots that no transaction holds.
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
    DELETE FROM surefoot_board WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM surefoot_board WHERE expires_at <= v_now
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
