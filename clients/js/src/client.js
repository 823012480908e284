// The counters service from a browser: EXP awards that never break the page, XP checks, progress.
// No dependencies: fetch, AbortController and crypto.randomUUID (browsers, node >= 20).

import {
  BadResponse, Conflict, CountersError, ExpRefused, Forbidden, InvalidId, Unauthorized, Unavailable,
  errorFor, excerpt, keyed,
} from './errors.js';
import { AWARD, LEVELS, USER_PROGRESS, XP_CHECK, mismatch } from './shapes.js';

const RETRY_STATUSES = new Set([502, 503, 504]);
const FALLBACK_CHECK = Object.freeze({
  has_sufficient_xp: false,
  xp_balance: 0,
  xp_required: 0,
  xp_deficit: 0,
  message: 'Unable to check your XP credits right now.',
  guidance: "⚠️ We couldn't check your XP credits just now. Please try again in a moment, " +
    'or visit your subscription page to see your plan.',
  subscription_url: '/subscriptions',
  current_tier: null,
  recommended_tier: null,
  code: 'unavailable',
});

// timeoutMs bounds one attempt; deadlineMs the whole call, every attempt and backoff included.
// expFailOpen: silentExpGain resolves to null for refusals and outages (false: it throws).
// logger: where silentExpGain and checkXP say why they answered without the service (null: quiet).
const defaults = {
  baseUrl: '', token: null, fetch: null, timeoutMs: 3000, deadlineMs: 5000, retries: 2,
  expFailOpen: true, logger: globalThis.console,
};
// Another attempt is not started with less than this left before the deadline.
const MIN_ATTEMPT_MS = 50;

/** Set what the module-level functions use: baseUrl ('' = same origin), token, fetch, ... */
export function configure(options = {}) {
  Object.assign(defaults, options);
}

function newKey() {
  return globalThis.crypto?.randomUUID?.() ?? `js-${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

function headersFor(secret, hasBody, key) {
  const headers = { Accept: 'application/json' };
  if (secret) headers.Authorization = `Bearer ${secret}`;
  if (hasBody) headers['Content-Type'] = 'application/json';
  if (key !== null) headers['Idempotency-Key'] = key;
  return headers;
}

/**
 * The attempts of one call: a timeout per attempt (reading the body included), retries when no
 * (whole) answer came or it was 502/503/504, and a deadline for them all (a stalled service
 * costs the page deadlineMs, not one timeout per attempt). Resolves to the final answer
 * { status, headers, text }; rejects with the last attempt's error when none came.
 */
async function attempts(method, url, init, opts) {
  const fetchImpl = opts.fetch ?? globalThis.fetch;
  const end = Date.now() + opts.deadlineMs;
  let lastError;
  for (let attempt = 0; attempt <= opts.retries; attempt += 1) {
    const abort = new AbortController();
    const waitMs = Math.max(Math.min(opts.timeoutMs, end - Date.now()), MIN_ATTEMPT_MS);
    const timer = setTimeout(() => abort.abort(
      new DOMException(`no whole answer within ${waitMs} ms`, 'TimeoutError')), waitMs);
    const pauseMs = 50 * 2 ** attempt;
    const final = () => attempt === opts.retries || Date.now() + pauseMs + MIN_ATTEMPT_MS > end;
    try {
      const response = await fetchImpl(url, { ...init, signal: abort.signal });
      const text = await response.text(); // a body cut short rejects: no answer, retried
      if (!RETRY_STATUSES.has(response.status) || final()) {
        return { status: response.status, headers: response.headers, text };
      }
    } catch (error) {
      lastError = error;
    } finally {
      clearTimeout(timer);
    }
    if (final()) break;
    await new Promise((resolve) => setTimeout(resolve, pauseMs));
  }
  throw lastError ?? new Error('no answer');
}

/**
 * The 2xx answer's body, parsed and checked against `shape` (shapes.js), or the error the
 * answer's code names; a 2xx body that is not JSON or not the shape is BadResponse.
 */
function resultOf(method, path, answer, shape) {
  const { status, headers, text } = answer;
  if (status >= 200 && status < 300) {
    let parsed;
    let wrong;
    try {
      parsed = JSON.parse(text);
      wrong = shape ? mismatch(parsed, shape) : null;
    } catch (error) {
      wrong = `not JSON (${error.message})`;
    }
    if (!wrong) return parsed;
    const detail = `${method} ${path}: ${status} body does not decode: ${wrong}; ` +
      `it begins "${excerpt(text)}"`;
    throw new BadResponse(status, 'bad_response', detail, {});
  }
  let parsed;
  try { parsed = JSON.parse(text); } catch { parsed = text; }
  throw errorFor(status, parsed, headers.get('retry-after'));
}

/**
 * One call to the service. Resolves to the 2xx body (checked against `shape`, a shapes.js
 * shape, when given); rejects with the CountersError its code names (errors.js): Unavailable
 * when no answer came within the retries and the deadline, BadResponse for a 2xx body that is
 * not the result. A write (`write: true`) sends one Idempotency-Key on every attempt
 * (`idempotencyKey`, or one made for the call), so the service applies it at most once, and
 * every error it rejects with carries that key as `idempotencyKey`.
 */
export async function call(method, path, { body, token, write = false, shape, ...options } = {}) {
  const opts = { ...defaults, ...options };
  // Only this call's own key: one given to configure() would be reused by every write.
  const key = write ? (options.idempotencyKey ?? newKey()) : null;
  const init = {
    method,
    headers: headersFor(token ?? opts.token, body !== undefined, key),
    body: body === undefined ? undefined : JSON.stringify(body),
  };
  let answer;
  try {
    answer = await attempts(method, `${opts.baseUrl}${path}`, init, opts);
  } catch (error) {
    const cause = error?.cause ? ` (${error.cause.code ?? error.cause.message ?? error.cause})` : '';
    const detail = `${method} ${path}: ${error?.name ?? 'Error'}: ${error?.message ?? error}${cause}`;
    throw keyed(new Unavailable(0, 'unavailable', detail, {}), key);
  }
  try {
    return resultOf(method, path, answer, shape);
  } catch (error) {
    throw keyed(error, key);
  }
}

// The service's shape of a text target id (its counters/ids.py; the Python client's TARGET_ID).
const TARGET_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

const SHORT_ESCAPES = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * `text` with what is not printable (Unicode's C and Z categories but the space: controls, ESC,
 * U+2028, ...) escaped as Python's repr writes it (\n, \x1b, \u2028), as the Python client's
 * printable(): a value from a caller or an answer cannot forge a log line or color a terminal.
 */
function printable(text) {
  return String(text).replace(/[\p{C}\p{Z}]/gu, (char) => {
    if (char === ' ') return char;
    if (SHORT_ESCAPES[char]) return SHORT_ESCAPES[char];
    const code = char.codePointAt(0);
    const hex = code.toString(16);
    if (code < 0x100) return `\\x${hex.padStart(2, '0')}`;
    return code < 0x10000 ? `\\u${hex.padStart(4, '0')}` : `\\U${hex.padStart(8, '0')}`;
  });
}

// An integer target id: the service takes 0 to 2^63 - 1 and no boolean (api/schemas/exp.py's
// TargetId); a number is exact only up to Number.MAX_SAFE_INTEGER, so a larger id goes as a
// string (the service keys a target by its id's text: 123 and '123' are one entity).
const TARGET_ID_RULE = `a whole number from 0 to ${Number.MAX_SAFE_INTEGER} (a larger one as a ` +
  'string), or 1-128 letters, digits and _.- starting with a letter or digit';

/**
 * `id` when the service accepts it as a target_id, else InvalidId before anything is sent: the
 * service would answer 422, and silentExpGain would swallow it (a reviewer, helper-63: -5 was
 * sent, refused, and resolved to null with a console.debug line).
 */
function checkedTargetId(id) {
  if ((Number.isSafeInteger(id) && id >= 0) || (typeof id === 'string' && TARGET_ID.test(id))) {
    return id;
  }
  const shown = printable(typeof id === 'bigint' ? `${id}n` : (JSON.stringify(id) ?? String(id)));
  const detail = `target_id ${shown.length > 80 ? `${shown.slice(0, 60)}... (${String(id).length} characters)` : shown}` +
    ` is not a target_id the service accepts (${TARGET_ID_RULE})`;
  throw new InvalidId(0, 'invalid_request', detail, {});
}

/**
 * The body's target fields of `target`, a { type, id } object, or TypeError naming that shape
 * (the Python client's ('character', 123) pair lost its id here: a reviewer, helper-63, had the
 * Python client refuse the JS shape with a TypeError, and this is its mirror).
 */
function checkedTarget(target) {
  if (typeof target !== 'object' || Array.isArray(target)) {
    const shown = printable(JSON.stringify(target) ?? String(target)).slice(0, 80);
    throw new TypeError(`target must be { type, id } such as { type: 'character', id: 123 }, not ${shown}`);
  }
  return { target_type: target.type, target_id: checkedTargetId(target.id) };
}

/**
 * Award EXP for `action` (target: null or { type, id } for creator-targeted actions, token: the
 * user's session token). Resolves to the award; rejects as `call` does (DailyLimitReached,
 * DailyCapReached, SelfAction, Unavailable, ... each with its idempotencyKey), or, before
 * sending, with InvalidId when the target's id is not one the service accepts and TypeError
 * when the target is not a { type, id } object.
 */
export async function award(action, target, sessionToken, options = {}) {
  const body = { action };
  if (target) Object.assign(body, checkedTarget(target));
  return call('POST', '/api/exp/gain', {
    ...options, body, token: sessionToken, write: true, shape: AWARD,
  });
}

/**
 * Errors that even a fail-open award throws: the caller's own credentials are refused (401: a
 * bad, expired or revoked token; 403: credentials not allowed to award), or its id is not one
 * (InvalidId, before sending). No retry or later call fixes them; swallowed, every award would
 * be lost in silence.
 */
export function failsLoudly(error) {
  return error instanceof Unauthorized || error instanceof Forbidden || error instanceof InvalidId;
}

/**
 * An award that failed open, logged: a rule's refusal (a limit, the cap, already triggered, one's
 * own entity: ExpRefused, and the other 409s) is routine (debug); the rest warn: outages,
 * answers that are not the service's, and any other error answer (a 422 for an unknown action, a
 * 404 for an entity with no recorded owner), the caller's mistake, which would otherwise lose
 * every such award unseen (a reviewer, helper-63: a 422 went to console.debug).
 */
function logUnawarded(logger, action, error) {
  const routine = error instanceof ExpRefused || error instanceof Conflict;
  const line = printable(`no EXP for ${action}: ${error.message}`);
  (routine ? logger?.debug : logger?.warn)?.call(logger, line);
}

/**
 * The seed's silentExpGain(action, target, sessionToken): award EXP for `action` (target is
 * null or { type, id } for creator-targeted actions). Fails open: resolves to the award, or
 * null when nothing was awarded (a limit, the cap, an outage, an answer that is not the
 * service's; logged: see logUnawarded). It throws only when the caller's own credentials are
 * refused (Unauthorized, Forbidden: a broken login is no outage) or the target's id is not one
 * (InvalidId, before sending), or anything with expFailOpen false.
 */
export async function silentExpGain(action, target, sessionToken, options = {}) {
  const { expFailOpen, logger } = { ...defaults, ...options };
  try {
    return await award(action, target, sessionToken, options);
  } catch (error) {
    if (!(error instanceof CountersError) || !expFailOpen || failsLoudly(error)) throw error;
    logUnawarded(logger, action, error);
    return null;
  }
}

/**
 * The seed's checkXP(generationType): the check-xp body with guidance. Never throws for the
 * service's sake: when the service cannot say, it answers not sufficient with generic guidance
 * and `code`, the reason (the error's code: 'unavailable', 'bad_response', 'not_found', ...;
 * logged as a warning).
 */
export async function checkXP(generationType, options = {}) {
  const path = `/api/v1/subscriptions/check-xp/${encodeURIComponent(generationType)}` +
    '?include_guidance=true';
  try {
    return await call('GET', path, { ...options, shape: XP_CHECK });
  } catch (error) {
    if (!(error instanceof CountersError)) throw error;
    const { logger } = { ...defaults, ...options };
    logger?.warn?.(printable(`check-xp ${generationType}: ${error.message}; answering not sufficient`));
    return { ...FALLBACK_CHECK, code: error.code };
  }
}

async function orNull(path, shape, options) {
  try {
    return await call('GET', path, { ...options, shape });
  } catch (error) {
    if (error instanceof CountersError) return null;
    throw error;
  }
}

/** The caller's { user_id, total_exp, level, progress }, or null if it cannot be had. */
export function getProgress(options = {}) {
  return orNull('/api/exp/progress', USER_PROGRESS, options);
}

/** The level table (GET /api/levels), or null. */
export function getLevels(options = {}) {
  return orNull('/api/levels', LEVELS, options);
}
