-- Spending limits on the org, a project or a task: money (micro-dollars) and/or tokens,
-- per calendar month (UTC) or in total. The LLM proxy checks them before each call
-- (analytics/budgets.rs).
CREATE TABLE budgets (
    id              uuid PRIMARY KEY,
    scope           text NOT NULL CHECK (scope IN ('org', 'project', 'task')),
    project_id      uuid REFERENCES projects (id) ON DELETE CASCADE,
    task_id         uuid REFERENCES tasks (id) ON DELETE CASCADE,
    period          text NOT NULL CHECK (period IN ('month', 'total')),
    max_cost_micros bigint CHECK (max_cost_micros >= 0),
    max_tokens      bigint CHECK (max_tokens >= 0),
    -- The period (`2026-12`, or `total`) whose 80 % warning has been given.
    warned          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (max_cost_micros IS NOT NULL OR max_tokens IS NOT NULL),
    CHECK ((scope = 'org' AND project_id IS NULL AND task_id IS NULL)
        OR (scope = 'project' AND project_id IS NOT NULL AND task_id IS NULL)
        OR (scope = 'task' AND task_id IS NOT NULL AND project_id IS NULL))
);
CREATE UNIQUE INDEX budgets_one ON budgets (scope, coalesce(task_id, project_id, '00000000-0000-0000-0000-000000000000'), period);

-- What was spent on LLM calls, per scope (the org: the nil id) and period, added to in
-- the transaction that meters each call. Counted from this version on.
CREATE TABLE spend (
    scope       text NOT NULL,
    scope_id    uuid NOT NULL,
    period      text NOT NULL,
    cost_micros bigint NOT NULL DEFAULT 0,
    tokens      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, scope_id, period)
);

-- A job stops as `paused` when a budget is spent, and goes on when it is raised.
ALTER TABLE ai_jobs DROP CONSTRAINT ai_jobs_state_check;
ALTER TABLE ai_jobs ADD CONSTRAINT ai_jobs_state_check
    CHECK (state IN ('pending', 'running', 'paused', 'succeeded', 'failed', 'cancelled'));
-- The engine's sweep looks for paused jobs a budget no longer holds back (a new month).
CREATE INDEX ai_jobs_paused ON ai_jobs (id) WHERE state = 'paused';
