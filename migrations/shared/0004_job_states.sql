-- How many jobs each org has in each state, kept by a trigger on every org's `ai_jobs`
-- (tenant migration 0010), so `/metrics` reads jobs by state across all orgs with one
-- small query. Keyed by the org's schema: one trigger function serves them all.
CREATE TABLE job_states (
    schema_name text NOT NULL,
    state       text NOT NULL,
    n           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (schema_name, state)
);

CREATE FUNCTION count_job_states() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE public.job_states SET n = n - 1 WHERE schema_name = TG_TABLE_SCHEMA AND state = OLD.state;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO public.job_states (schema_name, state, n) VALUES (TG_TABLE_SCHEMA, NEW.state, 1)
        ON CONFLICT (schema_name, state) DO UPDATE SET n = public.job_states.n + 1;
    END IF;
    RETURN NULL;
END $$;
