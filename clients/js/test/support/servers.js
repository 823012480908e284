// Local HTTP servers that answer as a broken or hostile one would (a proxy's HTML page, a body
// cut short, a 200 that is not the service's), with raw bytes on a real socket: what the
// client's fetch meets in the field, without a stand-in fetch.

import net from 'node:net';

/** A whole HTTP/1.1 answer: `status`, `body` (a string) and extra `headers`; the server hangs up. */
export function answer(status, body, headers = {}) {
  const lines = [`HTTP/1.1 ${status} X`, 'Connection: close',
    ...Object.entries({ 'Content-Type': 'application/json', ...headers }).map(([k, v]) => `${k}: ${v}`)];
  if (!Object.keys(headers).some((name) => name.toLowerCase() === 'content-length')) {
    lines.push(`Content-Length: ${Buffer.byteLength(body)}`);
  }
  return `${lines.join('\r\n')}\r\n\r\n${body}`;
}

/**
 * A server whose `reply(n)` gives the bytes of its n-th answer (0 first; null: hang up without
 * one; undefined: never answer, until the client hangs up). Resolves to { url, requests, close }; `requests` holds each request's headers (names in
 * lower case) as it came.
 */
export async function rawServer(reply) {
  const requests = [];
  const server = net.createServer((socket) => {
    let data = Buffer.alloc(0);
    socket.on('error', () => {});
    socket.on('data', (chunk) => {
      data = Buffer.concat([data, chunk]);
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return;
      const [, ...lines] = data.subarray(0, end).toString().split('\r\n');
      const headers = Object.fromEntries(lines.map((line) => {
        const colon = line.indexOf(':');
        return [line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()];
      }));
      if (data.length < end + 4 + Number(headers['content-length'] ?? 0)) return;
      socket.removeAllListeners('data');
      requests.push(headers);
      const bytes = reply(requests.length - 1);
      if (bytes === null) socket.destroy();
      else if (bytes !== undefined) socket.end(bytes);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const close = () => new Promise((resolve) => server.close(resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, requests, close };
}

/** A URL where nothing listens (connections are refused). */
export async function deadUrl() {
  const { url, close } = await rawServer(() => null);
  await close();
  return url;
}

/** A logger that keeps what it is told ({ level, message }), for the fail-open calls. */
export function keepingLogger() {
  const lines = [];
  const keep = (level) => (message) => lines.push({ level, message });
  return { lines, warn: keep('warn'), debug: keep('debug') };
}

/** A whole award body, as POST /api/exp/gain answers it. */
export function awardBody(overrides = {}) {
  return JSON.stringify({
    awarded_to: 'u1', action: 'daily_chat', success: true, exp_added: 20, total_exp: 20,
    level: 1, leveled_up: false, daily_exp_gained: 20, daily_exp_cap: 100, action_count: 1,
    action_limit: 1,
    progress: {
      current_level: 1, level_name: 'Newbie', total_exp: 20, current_level_exp: 20,
      exp_needed_for_next: 100, exp_to_next_level: 80, progress_percentage: 20,
      is_max_level: false,
    },
    ...overrides,
  });
}
