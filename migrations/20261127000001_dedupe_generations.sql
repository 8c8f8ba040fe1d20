-- Dedupe generations (DESIGN.md, "Dedupe and exactly-once", layers 1 and 2): the claim on
-- (definition, dedupe key) owns the key's windows; each window is one numbered generation with
-- at most one run, and the run's workflow id carries the generation. Windows are in event time,
-- so replaying old events maps them to their old generations and starts nothing new.

-- The previous claims held one window in wall-clock time; they become generation 1.
ALTER TABLE dedupe_claims RENAME TO dedupe_claims_v1;

-- The claim: one row per (definition, key), locked while a generation is resolved so that
-- concurrent starters of the same key agree on its generations.
CREATE TABLE dedupe_claims (
    definition_id    text        NOT NULL,
    dedupe_key       text        NOT NULL,
    last_generation  integer     NOT NULL DEFAULT 0 CHECK (last_generation >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (definition_id, dedupe_key)
);

-- One window of a claim: [window_start, window_end) in event time, normally `dedupe.window`
-- long. Windows of one claim never overlap: an event less than a window before an existing
-- generation joins it (its start moves back); one further back opens a generation that ends
-- where the next one starts.
CREATE TABLE dedupe_generations (
    definition_id  text        NOT NULL,
    dedupe_key     text        NOT NULL,
    generation     integer     NOT NULL CHECK (generation > 0),
    window_start   timestamptz NOT NULL,
    window_end     timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (definition_id, dedupe_key, generation),
    FOREIGN KEY (definition_id, dedupe_key) REFERENCES dedupe_claims (definition_id, dedupe_key) ON DELETE CASCADE,
    CHECK (window_end > window_start)
);
CREATE INDEX dedupe_generations_window ON dedupe_generations (definition_id, dedupe_key, window_start);
CREATE INDEX dedupe_generations_expiry ON dedupe_generations (window_end);

INSERT INTO dedupe_claims (definition_id, dedupe_key, last_generation, created_at)
    SELECT definition_id, dedupe_key, 1, claimed_at FROM dedupe_claims_v1;
INSERT INTO dedupe_generations (definition_id, dedupe_key, generation, window_start, window_end, created_at)
    SELECT definition_id, dedupe_key, 1, claimed_at, expires_at, claimed_at FROM dedupe_claims_v1;
DROP TABLE dedupe_claims_v1;

-- A run belongs to one generation of its key. `attempt` counts executions: a failed run that is
-- retried (a redelivered event, `tf runs retry`) runs again under the same run id as attempt 2.
ALTER TABLE activity_runs ADD COLUMN generation integer NOT NULL DEFAULT 1 CHECK (generation > 0);
ALTER TABLE activity_runs ADD COLUMN attempt integer NOT NULL DEFAULT 1 CHECK (attempt > 0);
CREATE INDEX activity_runs_by_generation ON activity_runs (definition_id, dedupe_key, generation);

-- Tasks of a retried run get their own ids (and results); the template/index pair is unique
-- per attempt.
ALTER TABLE tasks ADD COLUMN run_attempt integer NOT NULL DEFAULT 1 CHECK (run_attempt > 0);
ALTER TABLE tasks DROP CONSTRAINT tasks_run_id_template_item_index_key;
ALTER TABLE tasks ADD CONSTRAINT tasks_run_attempt_template_item UNIQUE (run_id, run_attempt, template, item_index);

-- Resolves the generation of each (definition, key, event time, window) in one statement, in
-- input order. Keys are locked in sorted order, so concurrent batches cannot deadlock. For each
-- element it returns the generation whose window covers the event time or a new one (created),
-- and the status of that generation's run if one was recorded, so callers skip generations
-- that already have a live run without asking Temporal.
CREATE FUNCTION tf_resolve_generations(
    p_definitions text[], p_keys text[], p_times timestamptz[], p_windows double precision[]
) RETURNS TABLE (ord integer, generation integer, window_start timestamptz, window_end timestamptz,
                 created boolean, run_status text)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    g record;
    n integer;
    next_start timestamptz;
    gen integer;
    w_start timestamptz;
    w_end timestamptz;
    is_new boolean;
BEGIN
    FOR r IN
        SELECT i AS ord, p_definitions[i] AS def, p_keys[i] AS key, p_times[i] AS t, p_windows[i] AS w
        FROM generate_subscripts(p_keys, 1) AS i
        ORDER BY p_definitions[i], p_keys[i], i
    LOOP
        INSERT INTO dedupe_claims AS c (definition_id, dedupe_key) VALUES (r.def, r.key)
            ON CONFLICT (definition_id, dedupe_key) DO UPDATE SET last_generation = c.last_generation
            RETURNING c.last_generation INTO n;
        SELECT dg.generation, dg.window_start, dg.window_end INTO g
            FROM dedupe_generations dg
            WHERE dg.definition_id = r.def AND dg.dedupe_key = r.key
              AND dg.window_start <= r.t AND r.t < dg.window_end;
        IF FOUND THEN
            gen := g.generation; w_start := g.window_start; w_end := g.window_end; is_new := false;
        ELSE
            SELECT dg.generation, dg.window_start, dg.window_end INTO g FROM dedupe_generations dg
                WHERE dg.definition_id = r.def AND dg.dedupe_key = r.key AND dg.window_start > r.t
                ORDER BY dg.window_start LIMIT 1;
            IF FOUND AND g.window_start - r.t < make_interval(secs => r.w) THEN
                -- A late event less than one window before an existing generation: events are
                -- routed concurrently, so it may simply have lost a race with a later one. It
                -- joins that generation, whose window now starts at the earlier time.
                UPDATE dedupe_generations dg SET window_start = r.t
                    WHERE dg.definition_id = r.def AND dg.dedupe_key = r.key AND dg.generation = g.generation;
                gen := g.generation; w_start := r.t; w_end := g.window_end; is_new := false;
            ELSE
                next_start := CASE WHEN FOUND THEN g.window_start END;
                gen := n + 1;
                w_start := r.t;
                w_end := least(r.t + make_interval(secs => r.w), coalesce(next_start, 'infinity'::timestamptz));
                INSERT INTO dedupe_generations (definition_id, dedupe_key, generation, window_start, window_end)
                    VALUES (r.def, r.key, gen, w_start, w_end);
                UPDATE dedupe_claims c SET last_generation = gen WHERE c.definition_id = r.def AND c.dedupe_key = r.key;
                is_new := true;
            END IF;
        END IF;
        ord := r.ord; generation := gen; window_start := w_start; window_end := w_end; created := is_new;
        run_status := (SELECT ar.status FROM activity_runs ar
            WHERE ar.definition_id = r.def AND ar.dedupe_key = r.key AND ar.generation = gen
            ORDER BY (ar.status = 'deduplicated'), ar.fired_at DESC LIMIT 1);
        RETURN NEXT;
    END LOOP;
END $$;
