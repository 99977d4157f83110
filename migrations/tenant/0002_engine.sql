-- The task engine: AI job templates, workflow bindings, the job queue, artifacts,
-- automation rules and their webhooks, modules (git repos), instance templates, agents.

-- What an AI job does: built-in defaults (builtin = 'implement' ...) and the org's own.
CREATE TABLE ai_job_templates (
    id              uuid PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    kind            text NOT NULL CHECK (kind IN ('implement', 'review', 'qa', 'custom')),
    prompt          text NOT NULL,
    model           text,
    allowed_tools   text[] NOT NULL,
    max_steps       integer NOT NULL CHECK (max_steps > 0),
    time_limit_secs integer NOT NULL CHECK (time_limit_secs > 0),
    budget_tokens   bigint CHECK (budget_tokens > 0),
    builtin         text UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Entering `status_id` starts a job from `template_id`; approving its artifact moves the
-- task to `next_status_id`, rejecting it to `return_status_id`.
CREATE TABLE bindings (
    status_id        uuid PRIMARY KEY REFERENCES statuses (id) ON DELETE CASCADE,
    workflow_id      uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    template_id      uuid NOT NULL REFERENCES ai_job_templates (id),
    next_status_id   uuid REFERENCES statuses (id) ON DELETE SET NULL,
    return_status_id uuid REFERENCES statuses (id) ON DELETE SET NULL
);

CREATE TABLE agents (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    labels       text[] NOT NULL DEFAULT '{}',
    version      text NOT NULL DEFAULT '',
    status       text NOT NULL DEFAULT 'offline' CHECK (status IN ('online', 'busy', 'offline')),
    last_seen_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The queue. A job is pending until an agent claims it (running, with a lease that the
-- agent renews); an expired lease puts it back to pending until attempts run out.
CREATE TABLE ai_jobs (
    id               uuid PRIMARY KEY,
    task_id          uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    template_id      uuid NOT NULL REFERENCES ai_job_templates (id),
    kind             text NOT NULL,
    -- The bound status the job was made for (NULL when a rule or a person started it).
    status_id        uuid REFERENCES statuses (id) ON DELETE SET NULL,
    -- The task event that created it: one job per entry, however often it is retried.
    origin_seq       integer NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    -- Higher first: the task's priority when the job was made (0 none .. 4 urgent).
    priority         smallint NOT NULL DEFAULT 0,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 3,
    lease_agent      uuid REFERENCES agents (id) ON DELETE SET NULL,
    lease_expires_at timestamptz,
    error            text,
    summary          text,
    usage            jsonb NOT NULL DEFAULT '{}',
    created_by       uuid REFERENCES public.users (id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    UNIQUE (task_id, origin_seq)
);
CREATE INDEX ai_jobs_pending ON ai_jobs (priority DESC, id) WHERE state = 'pending';
CREATE INDEX ai_jobs_leases ON ai_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX ai_jobs_task ON ai_jobs (task_id, id);

CREATE TABLE artifacts (
    id         uuid PRIMARY KEY,
    job_id     uuid NOT NULL REFERENCES ai_jobs (id) ON DELETE CASCADE,
    task_id    uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('patch', 'branch', 'review', 'test_report', 'text')),
    title      text NOT NULL DEFAULT '',
    content    text,
    reference  text,
    state      text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'approved', 'rejected')),
    decided_by uuid REFERENCES public.users (id) ON DELETE SET NULL,
    decided_at timestamptz,
    comment    text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX artifacts_task ON artifacts (task_id, id);
CREATE INDEX artifacts_job ON artifacts (job_id);

-- Automation. `trigger_kind` is denormalised from `spec` so a change loads only the
-- rules its event can fire. project_id NULL = every project of the org.
CREATE TABLE automation_rules (
    id           uuid PRIMARY KEY,
    project_id   uuid REFERENCES projects (id) ON DELETE CASCADE,
    name         text NOT NULL,
    enabled      boolean NOT NULL DEFAULT true,
    dry_run      boolean NOT NULL DEFAULT false,
    trigger_kind text NOT NULL,
    spec         jsonb NOT NULL,
    created_by   uuid REFERENCES public.users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- For schedule rules: the last time the schedule was run.
    last_run_at  timestamptz
);
CREATE INDEX automation_rules_trigger ON automation_rules (trigger_kind, project_id) WHERE enabled;

-- What time-based rules already did, so each stale spell or schedule slot fires once.
CREATE TABLE rule_marks (
    rule_id uuid NOT NULL REFERENCES automation_rules (id) ON DELETE CASCADE,
    task_id uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    mark    text NOT NULL,
    PRIMARY KEY (rule_id, task_id, mark)
);

-- Webhook calls wait here and are sent after the change commits, with retries.
CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY,
    rule_id         uuid REFERENCES automation_rules (id) ON DELETE SET NULL,
    task_id         uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    url             text NOT NULL,
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 5,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';

-- Git repositories of a project. `credentials` is sealed (ChaCha20-Poly1305) and never
-- leaves the server through the API.
CREATE TABLE modules (
    id             uuid PRIMARY KEY,
    project_id     uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name           text NOT NULL,
    url            text NOT NULL,
    default_branch text NOT NULL DEFAULT 'main',
    path_prefix    text NOT NULL DEFAULT '',
    credentials    bytea,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

-- Where a job runs: what the agent's workspace is built from.
CREATE TABLE instance_templates (
    id            uuid PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    base_image    text NOT NULL,
    packages      text[] NOT NULL DEFAULT '{}',
    setup_script  text NOT NULL DEFAULT '',
    env           jsonb NOT NULL DEFAULT '{}',
    network       boolean NOT NULL DEFAULT false,
    cpu_limit     real,
    memory_mb     integer,
    dind          boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE projects ADD COLUMN instance_template_id uuid REFERENCES instance_templates (id) ON DELETE SET NULL;
