-- The RunActivity input a run was started with (definition version, key, generation, trigger,
-- event), so `tf runs retry` can start a failed run again exactly as it first started.
ALTER TABLE activity_runs ADD COLUMN input jsonb;
