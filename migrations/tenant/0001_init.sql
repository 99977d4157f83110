-- One org's data. Applied to every org_{slug} schema, with search_path set to it.

CREATE TABLE workflows (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    -- The built-in template this workflow was made from ('kanban', ...), if any.
    template   text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE statuses (
    id          uuid PRIMARY KEY,
    workflow_id uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    name        text NOT NULL,
    category    text NOT NULL CHECK (category IN ('backlog', 'unstarted', 'started', 'review', 'done', 'cancelled')),
    position    integer NOT NULL,
    UNIQUE (workflow_id, name)
);

CREATE TABLE transitions (
    workflow_id uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    from_status uuid NOT NULL REFERENCES statuses (id) ON DELETE CASCADE,
    to_status   uuid NOT NULL REFERENCES statuses (id) ON DELETE CASCADE,
    PRIMARY KEY (from_status, to_status)
);

CREATE TABLE projects (
    id          uuid PRIMARY KEY,
    key         text NOT NULL UNIQUE CHECK (key ~ '^[A-Z][A-Z0-9]{1,9}$'),
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    workflow_id uuid NOT NULL REFERENCES workflows (id),
    created_by  uuid REFERENCES public.users (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE project_members (
    project_id uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('admin', 'tech_lead', 'developer', 'reviewer', 'viewer')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_user ON project_members (user_id);

CREATE TABLE tasks (
    id          uuid PRIMARY KEY,
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    number      integer NOT NULL,
    title       text NOT NULL,
    description text NOT NULL DEFAULT '',
    status_id   uuid NOT NULL REFERENCES statuses (id),
    priority    text NOT NULL DEFAULT 'none' CHECK (priority IN ('none', 'low', 'medium', 'high', 'urgent')),
    labels      text[] NOT NULL DEFAULT '{}',
    assignee_id uuid REFERENCES public.users (id) ON DELETE SET NULL,
    version     integer NOT NULL DEFAULT 1,
    -- The seq of the task's last event; events take the next one under the row lock.
    event_seq   integer NOT NULL DEFAULT 0,
    created_by  uuid REFERENCES public.users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz,
    UNIQUE (project_id, number)
);
CREATE INDEX tasks_labels ON tasks USING gin (labels);
CREATE INDEX tasks_assignee ON tasks (assignee_id);

CREATE TABLE comments (
    id         uuid PRIMARY KEY,
    task_id    uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    author_id  uuid REFERENCES public.users (id) ON DELETE SET NULL,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX comments_task ON comments (task_id, created_at);

-- Every change, in the transaction of the change. Streams deliver events in
-- (xid, id) order and only below the oldest running transaction, so a reader that
-- resumes after an event never misses one that committed late.
CREATE TABLE task_events (
    id         bigserial PRIMARY KEY,
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    task_id    uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    project_id uuid NOT NULL,
    seq        integer NOT NULL,
    type       text NOT NULL,
    payload    jsonb NOT NULL DEFAULT '{}',
    actor_id   uuid REFERENCES public.users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (task_id, seq)
);
CREATE INDEX task_events_order ON task_events (xid, id);
CREATE INDEX task_events_task ON task_events (task_id, xid, id);
