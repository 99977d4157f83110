-- What the engine's sweep may find due in each org, counted per org schema by triggers
-- on the org's own tables (tenant migration 0012): enabled time-based rules (schedule,
-- stale) and pending webhook calls. With running and paused jobs (counted in
-- job_states), a sweep visits only the orgs that have any, so idle orgs cost it nothing.
CREATE TABLE sweep_work (
    schema_name text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('timed_rule', 'pending_webhook')),
    n           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (schema_name, kind)
);

CREATE FUNCTION count_sweep_work(of_kind text, delta integer, in_schema text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.sweep_work (schema_name, kind, n) VALUES (in_schema, of_kind, delta)
    ON CONFLICT ON CONSTRAINT sweep_work_pkey DO UPDATE SET n = public.sweep_work.n + EXCLUDED.n;
$$;

CREATE FUNCTION count_timed_rules() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta integer := 0;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        IF OLD.enabled AND OLD.trigger_kind IN ('schedule', 'stale') THEN delta := delta - 1; END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        IF NEW.enabled AND NEW.trigger_kind IN ('schedule', 'stale') THEN delta := delta + 1; END IF;
    END IF;
    IF delta <> 0 THEN
        PERFORM public.count_sweep_work('timed_rule', delta, TG_TABLE_SCHEMA);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION count_pending_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta integer := 0;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        IF OLD.state = 'pending' THEN delta := delta - 1; END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        IF NEW.state = 'pending' THEN delta := delta + 1; END IF;
    END IF;
    IF delta <> 0 THEN
        PERFORM public.count_sweep_work('pending_webhook', delta, TG_TABLE_SCHEMA);
    END IF;
    RETURN NULL;
END $$;
