-- A result the relay cannot publish for a reason that will not change (its stored record does
-- not encode) is quarantined: marked here with the reason, skipped, and counted, so one bad row
-- never stops the results of the whole deployment.
ALTER TABLE task_results ADD COLUMN quarantined_at timestamptz;
ALTER TABLE task_results ADD COLUMN quarantine_reason text;
