// Every error the client throws, chosen by the error body's `code`, as the Python client's
// (clients/python/counters_client/errors.py, same names and tree):
//
// CountersError                 status, code, detail, body, retryAfter, idempotencyKey
// ├── Unavailable               no answer, 503 (storage_unavailable, outcome_unknown), 502/504
// ├── BadResponse               a 2xx whose body is not the result's shape (bad_response)
// ├── Unauthorized              401 unauthorized
// ├── Forbidden                 403 forbidden
// ├── NotFound                  404 not_found
// ├── InvalidRequest            400/413/422 (invalid_request, malformed_body, ...)
// │   └── IdempotencyKeyReused  422 idempotency_key_reused
// ├── ExpRefused                an award that gave nothing
// │   ├── DailyLimitReached     429 daily_limit_reached (retryAfter: seconds)
// │   ├── DailyCapReached       429 daily_cap_reached (retryAfter: seconds)
// │   ├── AlreadyTriggered      409 already_triggered
// │   ├── SelfAction            409 self_action
// │   └── AlreadyOwned          409 already_owned
// ├── XpRefused                 the seed's 402/403 body (message, guidance, recommended_tier)
// │   ├── InsufficientXp        402 insufficient_xp (xpBalance, xpRequired, xpDeficit)
// │   └── TierRequired          403 tier_required
// └── Conflict                  other 409s (already_settled, hold_expired, ...)

// An error body's text is cut to this many characters in `detail` (a proxy's whole HTML page
// is no message); the whole text stays in `body.detail`.
export const EXCERPT_CHARS = 200;

/**
 * An error answer (or no answer) from the service: `status` (the HTTP status; 0 when no answer
 * came), `code` (the body's `code`; branch on it), `detail` (for people), `body` (the whole
 * error body), `retryAfter` (seconds, from Retry-After; null without one) and `idempotencyKey`:
 * the Idempotency-Key every attempt of a write sent (the caller's, or the one the client made
 * for the call), null for a read. A write whose outcome is not known (`Unavailable`:
 * `outcome_unknown`, or no answer after the retries) may be retried with that key: the service
 * applies it at most once and replays the first answer.
 */
export class CountersError extends Error {
  constructor(status, code, detail, body = {}) {
    super(`${status} ${code}: ${detail}`);
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.body = body;
    this.retryAfter = null;
    this.idempotencyKey = null;
  }
}

/** The service could not be reached, timed out, or said its storage is down (retry). */
export class Unavailable extends CountersError {}

/**
 * A 2xx answer whose body is not the call's result (`code` 'bad_response', `status` the
 * answer's, `detail` says what is wrong and quotes the body's start): a server that is not
 * this service, or a broken proxy. Whether a write it answered was applied is not known.
 */
export class BadResponse extends CountersError {}

export class Unauthorized extends CountersError {}
export class Forbidden extends CountersError {}
export class NotFound extends CountersError {}
export class InvalidRequest extends CountersError {}
/**
 * An id the service would refuse (a target id not of its shape: empty, over 128 characters, a
 * control character; a number below 0 or past Number.MAX_SAFE_INTEGER, a boolean), refused
 * before anything is sent (status 0, code 'invalid_request').
 * silentExpGain throws it too: the caller's bug, not an outage (as the Python client's InvalidId).
 */
export class InvalidId extends InvalidRequest {}
export class IdempotencyKeyReused extends InvalidRequest {}

/** An award refused by a rule: nothing was awarded. */
export class ExpRefused extends CountersError {}
export class DailyLimitReached extends ExpRefused {}
export class DailyCapReached extends ExpRefused {}
export class AlreadyTriggered extends ExpRefused {}
export class SelfAction extends ExpRefused {}
export class AlreadyOwned extends ExpRefused {}

/** A debit or hold refused with the seed's middleware body (`body` holds all of it). */
export class XpRefused extends CountersError {
  get xpBalance() { return Number(this.body.xp_balance ?? 0); }
  get xpRequired() { return Number(this.body.xp_required ?? 0); }
  get xpDeficit() { return Number(this.body.xp_deficit ?? 0); }
  get guidance() { return typeof this.body.guidance === 'string' ? this.body.guidance : null; }
}

export class InsufficientXp extends XpRefused {}
export class TierRequired extends XpRefused {}
export class Conflict extends CountersError {}

// Maps, not objects: a body's code such as 'constructor' must not find Object's own members.
export const BY_CODE = new Map([
  ['storage_unavailable', Unavailable],
  ['outcome_unknown', Unavailable], // retried with the same Idempotency-Key, as every 503
  ['unauthorized', Unauthorized],
  ['forbidden', Forbidden],
  ['not_found', NotFound],
  ['invalid_request', InvalidRequest],
  ['malformed_body', InvalidRequest],
  ['payload_too_large', InvalidRequest],
  ['idempotency_key_reused', IdempotencyKeyReused],
  ['daily_limit_reached', DailyLimitReached],
  ['daily_cap_reached', DailyCapReached],
  ['already_triggered', AlreadyTriggered],
  ['self_action', SelfAction],
  ['already_owned', AlreadyOwned],
  ['insufficient_xp', InsufficientXp],
  ['tier_required', TierRequired],
]);
const BY_STATUS = new Map([
  [400, InvalidRequest], [401, Unauthorized], [403, Forbidden], [404, NotFound], [409, Conflict],
  [413, InvalidRequest], [422, InvalidRequest], [503, Unavailable],
  // A gateway's 502/504 after the retries: a write may have been applied; retry with its key.
  [502, Unavailable], [504, Unavailable],
]);

/** `text` cut to `EXCERPT_CHARS`, whitespace runs folded (what a message can quote of a body). */
export function excerpt(text) {
  const folded = String(text).replace(/\s+/g, ' ').trim();
  return folded.length > EXCERPT_CHARS ? `${folded.slice(0, EXCERPT_CHARS)}…` : folded;
}

/**
 * The error for an error answer: by its body's `code`, else by its status. `body` is the
 * parsed JSON, or the answer's text when it was not JSON (a proxy's HTML page: `detail` is its
 * excerpt). `retryAfter` is the Retry-After header (used when it is whole seconds).
 */
export function errorFor(status, body, retryAfter = null) {
  const object = body !== null && typeof body === 'object' && !Array.isArray(body);
  const fields = object ? body : { detail: String(body ?? '') };
  const code = String(fields.code || fields.error || `http_${status}`);
  const detail = object ? String(fields.detail || fields.message || '') : excerpt(fields.detail);
  const Kind = BY_CODE.get(code) ?? BY_STATUS.get(status) ?? CountersError;
  const error = new Kind(status, code, detail, fields);
  if (retryAfter !== null && /^\d+$/.test(retryAfter)) error.retryAfter = Number(retryAfter);
  return error;
}

/**
 * `error` carrying the Idempotency-Key its call's attempts sent (null: a read), so that the
 * caller can retry the write with it (an `outcome_unknown`, an `Unavailable`).
 */
export function keyed(error, key) {
  error.idempotencyKey = key ?? null;
  return error;
}
