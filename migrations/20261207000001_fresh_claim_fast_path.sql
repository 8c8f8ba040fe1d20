-- A claim whose counter is still 0 never had a generation, so it has no windows to search and
-- no runs to report: tf_resolve_generations opens its generation 1 without the three lookups
-- (issue 13: a burst of new keys is the common case, and the claim's PostgreSQL work shares the
-- machine with Temporal). Same results as before for every input.
CREATE OR REPLACE FUNCTION tf_resolve_generations(
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
        IF n = 0 THEN
            -- A claim that never had a generation (just inserted, the common case in a burst of
            -- new keys) has no windows and no runs: open generation 1 without looking.
            gen := 1; w_start := r.t; w_end := r.t + make_interval(secs => r.w); is_new := true;
            INSERT INTO dedupe_generations (definition_id, dedupe_key, generation, window_start, window_end)
                VALUES (r.def, r.key, gen, w_start, w_end);
            UPDATE dedupe_claims c SET last_generation = gen WHERE c.definition_id = r.def AND c.dedupe_key = r.key;
            ord := r.ord; generation := gen; window_start := w_start; window_end := w_end; created := is_new;
            run_status := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
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
