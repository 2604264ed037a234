-- Every pulled or received record writes a change-control row, so each index on change_log is
-- paid for on the hot path. Low-cardinality columns (status, action, direction) and run_id are
-- filtered together with the remaining indexes (sync, ids, time); failures and conflicts, which
-- operators look for most, keep an index of their own that success rows never touch.
DROP INDEX change_log_status;
DROP INDEX change_log_action;
DROP INDEX change_log_direction;
DROP INDEX change_log_run;
CREATE INDEX change_log_problems ON change_log (status, id) WHERE status <> 'success';
