-- surefoot.idempotency.TransactionalKeys: idempotency keys written in the application's
-- own transactions. A row without a status is a claim whose response is not recorded.
CREATE TABLE IF NOT EXISTS surefoot_transactional_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    token TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    status INTEGER,
    headers TEXT,
    body BYTEA
);
CREATE INDEX IF NOT EXISTS surefoot_transactional_keys_expires_at ON surefoot_transactional_keys (expires_at);

-- Runs at COMMIT (deferred), on the row as it is then: a transaction that claimed a key
-- and never recorded its response must not commit its business writes without it.
CREATE OR REPLACE FUNCTION surefoot_transactional_keys_completed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pending boolean;
BEGIN
    EXECUTE format('SELECT status IS NULL FROM %I.%I WHERE key = $1',
                   TG_TABLE_SCHEMA, TG_TABLE_NAME)
        INTO pending USING NEW.key;
    IF pending THEN
        RAISE EXCEPTION 'idempotency key % was claimed but its response was not recorded',
            NEW.key
            USING ERRCODE = 'integrity_constraint_violation',
                  HINT = 'call claim.complete() before COMMIT, or roll back';
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS surefoot_transactional_keys_completed ON surefoot_transactional_keys;
CREATE CONSTRAINT TRIGGER surefoot_transactional_keys_completed
    AFTER INSERT OR UPDATE OF token ON surefoot_transactional_keys
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION surefoot_transactional_keys_completed();
