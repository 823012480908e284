-- 0002_import_events: `counters import` ledgers each imported line as an event of kind
-- exp_import (EXP added; totals exp, level) or xp_import (action subscription or topup; the XP
-- totals), with the line's import id in idem. Their kinds start with the family's prefix, so
-- reconcile sums them with the other EXP and XP rows. The command looks the ids up here to
-- skip lines Redis forgot it applied.
CREATE INDEX ledger_import_idem ON ledger (idem) WHERE kind IN ('exp_import', 'xp_import');
