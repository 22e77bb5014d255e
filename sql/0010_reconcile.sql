-- 0010: the reconciler's runs. Each run lists trackers from the API and
-- applies them through the projection; its row says what it found (the
-- drift). The run in progress, its window and its before_id cursor live in
-- sync_state ('reconcile_run', eps_reconcile_begin), so that a run stopped
-- by a restart, a 401 or a long 429 pause resumes where it stopped.

CREATE TABLE reconcile_runs (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reason         text        NOT NULL CHECK (reason IN ('webhook', 'backfill', 'schedule', 'manual')),
    window_start   timestamptz NOT NULL,                  -- trackers created from here
    window_end     timestamptz NOT NULL,                  -- to here (the run's start)
    status         text        NOT NULL DEFAULT 'running'
                               CHECK (status IN ('running', 'stopped', 'completed')),
    slot           bigint,                                -- a scheduled run's slot (unix second)
    instance_id    text,                                  -- the replica that ran it last
    pages          integer     NOT NULL DEFAULT 0,
    listed         integer     NOT NULL DEFAULT 0,        -- trackers the API listed
    changed        integer     NOT NULL DEFAULT 0,        -- stored ones it brought forward
    status_changed integer     NOT NULL DEFAULT 0,        -- of those, with another status
    created        integer     NOT NULL DEFAULT 0,        -- trackers the database did not have
    error          text,                                  -- why it stopped
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX reconcile_runs_finished ON reconcile_runs (finished_at) WHERE status = 'completed';
