-- realtime.messages: what private channels are authorized against (RLS policies on it) and
-- what database broadcasts are written to. Partitioned by day as upstream does it.
CREATE SCHEMA IF NOT EXISTS realtime;
GRANT USAGE ON SCHEMA realtime TO anon, authenticated, service_role;

DO $migration$
BEGIN
  IF to_regclass('realtime.messages') IS NULL THEN
    CREATE TABLE realtime.messages (
      topic text NOT NULL,
      extension text NOT NULL,
      payload jsonb,
      event text,
      private boolean DEFAULT false,
      updated_at timestamp without time zone NOT NULL DEFAULT now(),
      inserted_at timestamp without time zone NOT NULL DEFAULT now(),
      id uuid NOT NULL DEFAULT gen_random_uuid(),
      binary_payload bytea,
      PRIMARY KEY (id, inserted_at)
    ) PARTITION BY RANGE (inserted_at);
    ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;
  END IF;
END
$migration$;
GRANT SELECT, INSERT, UPDATE ON realtime.messages TO anon, authenticated, service_role;

-- The sub-topic being authorized, readable from policies.
DO $migration$
BEGIN
  IF to_regprocedure('realtime.topic()') IS NULL THEN
    CREATE FUNCTION realtime.topic() RETURNS text LANGUAGE sql STABLE AS $f$
      SELECT nullif(current_setting('realtime.topic', true), '')::text
    $f$;
  END IF;
END
$migration$;
GRANT EXECUTE ON FUNCTION realtime.topic() TO anon, authenticated, service_role;

-- Daily partitions from yesterday to `days_ahead` days ahead. The server calls it at start and
-- every hour; realtime.send calls it for today so a send never fails for want of a partition.
CREATE OR REPLACE FUNCTION realtime.rs_ensure_message_partitions(days_ahead int DEFAULT 3)
RETURNS void LANGUAGE plpgsql AS $f$
DECLARE
  d date;
BEGIN
  FOR d IN SELECT generate_series(current_date - 1, current_date + days_ahead, interval '1 day')::date LOOP
    IF to_regclass(format('realtime.messages_%s', to_char(d, 'YYYY_MM_DD'))) IS NULL THEN
      BEGIN
        EXECUTE format(
          'CREATE TABLE realtime.%I PARTITION OF realtime.messages FOR VALUES FROM (%L) TO (%L)',
          'messages_' || to_char(d, 'YYYY_MM_DD'), d, d + 1);
      EXCEPTION WHEN duplicate_table OR unique_violation THEN NULL;
      END;
    END IF;
  END LOOP;
END
$f$;

-- Partitions older than 72 hours go, as upstream's janitor drops them.
CREATE OR REPLACE FUNCTION realtime.rs_drop_old_message_partitions()
RETURNS void LANGUAGE plpgsql AS $f$
DECLARE
  p record;
BEGIN
  FOR p IN
    SELECT c.relname FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
      JOIN pg_class parent ON parent.oid = i.inhparent
      JOIN pg_namespace n ON n.oid = parent.relnamespace
     WHERE n.nspname = 'realtime' AND parent.relname = 'messages'
       AND c.relname ~ '^messages_\d{4}_\d{2}_\d{2}$'
       AND to_date(substring(c.relname from 10), 'YYYY_MM_DD') < current_date - 3
  LOOP
    EXECUTE format('DROP TABLE IF EXISTS realtime.%I', p.relname);
  END LOOP;
END
$f$;

SELECT realtime.rs_ensure_message_partitions();

-- realtime.send: broadcast from SQL. It inserts as the caller (so RLS on realtime.messages
-- applies to whoever calls it), adds the message id to the payload, and never raises: a
-- failure becomes a WARNING, as upstream.
DO $migration$
BEGIN
  IF to_regprocedure('realtime.send(jsonb, text, text, boolean)') IS NULL THEN
    CREATE FUNCTION realtime.send(payload jsonb, event text, topic text, private boolean DEFAULT true)
    RETURNS void LANGUAGE plpgsql AS $f$
    DECLARE
      message_id uuid := gen_random_uuid();
    BEGIN
      BEGIN
        PERFORM set_config('realtime.topic', topic, true);
        IF to_regclass(format('realtime.messages_%s', to_char(now(), 'YYYY_MM_DD'))) IS NULL THEN
          PERFORM realtime.rs_ensure_message_partitions(0);
        END IF;
        INSERT INTO realtime.messages (id, payload, event, topic, private, extension)
        VALUES (message_id,
                CASE WHEN payload ? 'id' THEN payload ELSE payload || jsonb_build_object('id', message_id) END,
                event, topic, private, 'broadcast');
      EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'WarnSendingBroadcastMessage: %', SQLERRM;
      END;
    END
    $f$;
  END IF;

  IF to_regprocedure('realtime.broadcast_changes(text, text, text, text, text, record, record, text)') IS NULL THEN
    CREATE FUNCTION realtime.broadcast_changes(
      topic_name text, event_name text, operation text, table_name text, table_schema text,
      new record, old record, level text DEFAULT 'ROW')
    RETURNS void LANGUAGE plpgsql AS $f$
    DECLARE
      row_data jsonb := '{}'::jsonb;
    BEGIN
      IF level = 'STATEMENT' THEN
        RAISE EXCEPTION 'function can only be triggered for each row, not for each statement';
      END IF;
      IF operation IN ('INSERT', 'UPDATE', 'DELETE') THEN
        row_data := jsonb_build_object(
          'old_record', CASE WHEN old IS NULL THEN NULL ELSE to_jsonb(old) END,
          'record', CASE WHEN new IS NULL THEN NULL ELSE to_jsonb(new) END,
          'operation', operation, 'table', table_name, 'schema', table_schema);
        PERFORM realtime.send(row_data, event_name, topic_name);
      ELSE
        RAISE EXCEPTION 'Unexpected operation type: %', operation;
      END IF;
    END
    $f$;
  END IF;
END
$migration$;
GRANT EXECUTE ON FUNCTION realtime.send(jsonb, text, text, boolean) TO anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION realtime.broadcast_changes(text, text, text, text, text, record, record, text)
  TO anon, authenticated, service_role;
