-- realtime.send_binary: a binary database broadcast, as upstream's migration
-- 20260603120000_add_send_binary_function (with the warning name of 20260605120000). The bytes
-- go to `binary_payload` and reach 2.0.0 subscribers as binary user broadcasts (kind 4); like
-- realtime.send it inserts as the caller and turns every failure into a WARNING.
ALTER TABLE realtime.messages ADD COLUMN IF NOT EXISTS binary_payload bytea;

DO $migration$
BEGIN
  IF NOT EXISTS (
    SELECT 1 FROM pg_constraint
     WHERE conname = 'messages_payload_exclusive' AND conrelid = 'realtime.messages'::regclass
  ) THEN
    ALTER TABLE realtime.messages
      ADD CONSTRAINT messages_payload_exclusive
      CHECK (payload IS NULL OR binary_payload IS NULL) NOT VALID;
  END IF;
END
$migration$;

-- An earlier upstream migration named the binary variant realtime.send(bytea, ...).
DROP FUNCTION IF EXISTS realtime.send(bytea, text, text, boolean);

CREATE OR REPLACE FUNCTION realtime.send_binary(
  payload bytea,
  event text,
  topic text,
  private boolean DEFAULT true
) RETURNS void LANGUAGE plpgsql AS $f$
DECLARE
  generated_id uuid;
BEGIN
  BEGIN
    generated_id := gen_random_uuid();
    EXECUTE format('SET LOCAL realtime.topic TO %L', topic);
    IF to_regclass(format('realtime.messages_%s', to_char(now(), 'YYYY_MM_DD'))) IS NULL THEN
      PERFORM realtime.rs_ensure_message_partitions(0);
    END IF;
    INSERT INTO realtime.messages (id, binary_payload, event, topic, private, extension)
    VALUES (generated_id, payload, event, topic, private, 'broadcast');
  EXCEPTION
    WHEN OTHERS THEN
      RAISE WARNING 'WarnSendingBroadcastMessage: %', SQLERRM;
  END;
END;
$f$;
GRANT EXECUTE ON FUNCTION realtime.send_binary(bytea, text, text, boolean)
  TO anon, authenticated, service_role;
