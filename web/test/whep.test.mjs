// The WHEP endpoint (/whep on spyglass's HTTP server) against clients spyglass did not write:
// the `whip-whep` npm package's WHEPClient in headless Chromium (web/test/standards/), and a
// Chromium peer that does what go2rtc's WHEP source does (complete offer, token in the URL, no
// trickle, no DELETE); plus the project's own checks of every status code, CORS, the token, and
// that WHEP and MQTT viewers share --max-viewers and the status. Everything on 127.0.0.1.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { Broker, Spyglass, fileFixture, freePort, sleep, until, videoStats } from './harness.mjs';
import { PageServer } from './standards/pages.mjs';
import { watchWhep } from './standards/whep-viewer.mjs';

const fixture = fileFixture({ browser: true });
const { cleanups } = fixture;
const TOKEN = 'whep-test-token-0123456789abcdef';

/** A broker, a page server, and spyglass with a WHEP token (options: maxViewers, extra argv). */
async function start({ maxViewers = 2, extra = [], token = TOKEN } = {}) {
  const broker = await Broker.start();
  cleanups.push(() => broker.close());
  const dir = mkdtempSync(join(tmpdir(), 'spyglass-whep-'));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  const args = [...extra, '--audio', 'tone'];
  if (token) {
    writeFileSync(join(dir, 'token'), `${token}\n`, { mode: 0o600 });
    args.push('--whep-token-file', join(dir, 'token'));
  }
  const daemon = await Spyglass.start(broker, { size: '320x240', maxViewers, extra: args });
  cleanups.push(() => daemon.close());
  const pages = await PageServer.start();
  cleanups.push(() => pages.close());
  const url = `http://127.0.0.1:${daemon.httpPort}/whep`;
  return { broker, daemon, pages, url };
}

/** The device's retained status. */
async function status(broker, id) {
  const client = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  try {
    const got = new Promise((resolve) => client.on('message', (_t, p) => resolve(JSON.parse(p.toString()))));
    await client.subscribeAsync(`${id}/status`);
    return await got;
  } finally {
    await client.endAsync();
  }
}

const viewersAre = (broker, id, n) => until(`status viewers = ${n}`, async () => (await status(broker, id)).viewers === n);

const auth = { authorization: `Bearer ${TOKEN}` };
const sdpType = { 'content-type': 'application/sdp' };
// Passes the device's cheap look at an offer (an m-line, ICE credentials, a fingerprint).
const MINIMAL_OFFER = 'v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00\r\n';

test('whip-whep\'s WHEPClient in Chromium watches over WHEP; it counts as a viewer; DELETE frees its place', async (t) => {
  const { broker, daemon, pages, url } = await start({ maxViewers: 1 });
  const v = await watchWhep(fixture.browser.context, pages, { url, token: TOKEN, timeoutMs: 20000 });
  cleanups.push(() => v.stop());
  assert.equal(v.error, null);
  assert.ok(v.ok, JSON.stringify(v));
  assert.deepEqual([v.videoWidth, v.videoHeight], [320, 240]);
  await until('audio packets', async () => (await v.report()).audioPackets > 0);
  const post = v.exchanges.find((x) => x.method === 'POST');
  assert.equal(post.status, 201);
  assert.match(post.location, /^\/whep\/[0-9a-f]{32}$/);
  assert.equal(post.etag, `"${post.location.slice(6)}"`);
  assert.equal(post['content-type'], 'application/sdp');
  t.diagnostic(`WHEP POST -> first frame: ${v.firstFrameMs} ms`);
  await viewersAre(broker, daemon.id, 1);

  // The one place is taken: an MQTT viewer (the device's own page) is told the camera is busy.
  const page = await fixture.browser.context.newPage();
  cleanups.push(() => page.close());
  await page.goto(`${daemon.pageUrl}?id=${encodeURIComponent(daemon.id)}`);
  await until('page busy', () => page.evaluate(() => window.spyglass?.state === 'busy'));

  // The client's DELETE (stop()) ends the session: the place is free and the page takes it.
  const exchanges = await v.stop();
  const del = exchanges.find((x) => x.method === 'DELETE');
  assert.equal(del.status, 200);
  assert.ok(exchanges.some((x) => x.method === 'PATCH' && x.status === 204), `trickle PATCHes: ${JSON.stringify(exchanges)}`);
  await until('page live', () => page.evaluate(() => window.spyglass?.state === 'live'), 30000);
  await until('page frames', async () => (await videoStats(page))?.framesDecoded > 0);
  // And now a WHEP offer is refused with 503, changing nothing.
  const full = await fetch(url, { method: 'POST', headers: { ...auth, ...sdpType }, body: MINIMAL_OFFER });
  assert.equal(full.status, 503, await full.text());
  await viewersAre(broker, daemon.id, 1);
});

test('bad WHEP requests get 400, 401, 404, 405, 412, 413, 415, 422 and 429, and the viewer watching goes on', async () => {
  const { broker, daemon, pages, url } = await start();
  const v = await watchWhep(fixture.browser.context, pages, { url, token: TOKEN, timeoutMs: 20000 });
  cleanups.push(() => v.stop());
  assert.ok(v.ok, JSON.stringify(v));
  const session = new URL(v.exchanges.find((x) => x.method === 'POST').location, url).href;
  const etag = v.exchanges.find((x) => x.method === 'POST').etag;
  const req = async (target, method, headers = {}, body = undefined) => {
    const r = await fetch(target, { method, headers, body });
    return { status: r.status, headers: r.headers, text: await r.text() };
  };
  const frag = { ...auth, 'content-type': 'application/trickle-ice-sdpfrag' };

  // CORS preflights need no token and name what a client sends.
  const pre = await req(url, 'OPTIONS', { origin: 'http://elsewhere.test', 'access-control-request-method': 'POST' });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get('access-control-allow-origin'), '*');
  assert.match(pre.headers.get('access-control-allow-headers'), /authorization/i);
  assert.match(pre.headers.get('access-control-allow-methods'), /POST/);
  assert.equal(pre.headers.get('accept-post'), 'application/sdp');
  assert.equal((await req(session, 'OPTIONS')).headers.get('accept-patch'), 'application/trickle-ice-sdpfrag');

  const cases = [
    ['no token', url, 'POST', sdpType, MINIMAL_OFFER, 401],
    ['wrong token', url, 'POST', { ...sdpType, authorization: 'Bearer nope' }, MINIMAL_OFFER, 401],
    ['token in the query', `${url}?token=nope`, 'POST', sdpType, MINIMAL_OFFER, 401],
    ['wrong type', url, 'POST', { ...auth, 'content-type': 'text/plain' }, MINIMAL_OFFER, 415],
    ['not an offer', url, 'POST', { ...auth, ...sdpType }, 'hello', 400],
    ['offer too large', url, 'POST', { ...auth, ...sdpType }, MINIMAL_OFFER + 'a=x\r\n'.repeat(20000), 413],
    ['offer the stack refuses', url, 'POST', { ...auth, ...sdpType }, MINIMAL_OFFER, 400],
    ['PUT', url, 'PUT', auth, 'x', 405],
    ['unknown session', `${url}/0123456789abcdef0123456789abcdef`, 'PATCH', frag, 'a=end-of-candidates\r\n', 404],
    ['not a session id', `${url}/..%2fconfig.json`, 'DELETE', auth, undefined, 404],
    ['PATCH without token', session, 'PATCH', { 'content-type': 'application/trickle-ice-sdpfrag' }, 'a=end-of-candidates\r\n', 401],
    ['PATCH wrong type', session, 'PATCH', { ...auth, 'content-type': 'application/sdp' }, 'a=end-of-candidates\r\n', 415],
    ['PATCH not SDP', session, 'PATCH', frag, 'garbage\r\n', 400],
    ['PATCH candidate too long', session, 'PATCH', frag, `a=candidate:${'1'.repeat(600)}\r\n`, 400],
    ['PATCH stale ETag', session, 'PATCH', { ...frag, 'if-match': '"0000"' }, 'a=end-of-candidates\r\n', 412],
    ['ICE restart', session, 'PATCH', { ...frag, 'if-match': '*' }, 'a=ice-ufrag:new1\r\na=ice-pwd:newnewnewnewnewnewnewnew\r\n', 422],
    ['ICE restart (new ufrag)', session, 'PATCH', frag, 'a=ice-ufrag:new2\r\na=ice-pwd:newnewnewnewnewnewnewnew\r\n', 422],
    ['PATCH with the ETag', session, 'PATCH', { ...frag, 'if-match': etag }, 'a=end-of-candidates\r\n', 204],
  ];
  for (const [what, target, method, headers, body, want] of cases) {
    const r = await req(target, method, headers, body);
    assert.equal(r.status, want, `${what}: ${r.status} ${r.text}`);
    assert.equal(r.headers.get('access-control-allow-origin'), '*', `${what}: CORS`);
    if (want === 401) assert.match(r.headers.get('www-authenticate'), /^Bearer/);
  }
  // PATCH requests are rate limited per session (429 with Retry-After).
  let limited = null;
  for (let i = 0; i < 30 && !limited; i++) {
    const r = await req(session, 'PATCH', frag, 'a=ice-options:trickle\r\n');
    if (r.status === 429) limited = r;
    else assert.equal(r.status, 204);
  }
  assert.ok(limited, 'a PATCH flood gets 429');
  assert.ok(Number(limited.headers.get('retry-after')) >= 1);

  // None of it disturbed the viewer, and the device still counts exactly one.
  const before = (await v.report()).framesDecoded;
  await until('frames still decoded', async () => (await v.report()).framesDecoded > before + 10);
  assert.equal((await v.report()).connectionState, 'connected');
  await viewersAre(broker, daemon.id, 1);
});

test('a go2rtc-style WHEP client (complete offer, token in the URL, no trickle) plays; ICE servers come as Link headers', async (t) => {
  // A STUN server nobody answers, on loopback: its Link header is what is checked, and the answer
  // goes out after the gathering wait with the host candidates it has.
  const stunPort = await freePort();
  const { pages, url } = await start({ extra: ['--stun', `stun:127.0.0.1:${stunPort}`] });
  const page = await fixture.browser.context.newPage();
  cleanups.push(() => page.close());
  await page.goto(pages.blank);
  const r = await page.evaluate(async (target) => {
    const pc = new RTCPeerConnection();
    window.pc = pc;
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.ontrack = (e) => {
      if (e.track.kind === 'video') document.getElementById('video').srcObject = new MediaStream([e.track]);
    };
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') resolve();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && resolve();
    });
    const started = Date.now();
    const res = await fetch(target, { method: 'POST', headers: { 'content-type': 'application/sdp' }, body: pc.localDescription.sdp });
    const answer = await res.text();
    if (res.status === 201) await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    return { status: res.status, link: res.headers.get('link'), answer, ms: Date.now() - started };
  }, `${url}?token=${TOKEN}`);
  assert.equal(r.status, 201, r.answer);
  assert.equal(r.link, `<stun:127.0.0.1:${stunPort}>; rel="ice-server"`);
  assert.match(r.answer, /^a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 \d+ typ host/m);
  assert.match(r.answer, /^a=sendonly/m);
  t.diagnostic(`answer after ${r.ms} ms (gathering waits at most 2 s for the unanswered STUN server)`);
  await until('frames', async () => page.evaluate(async () => {
    let n = 0;
    (await window.pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') n = s.framesDecoded; });
    return n > 10;
  }));
});

test('without --whep-token-file there is no WHEP endpoint', async () => {
  const { url } = await start({ token: null });
  const r = await fetch(url, { method: 'POST', headers: { ...auth, ...sdpType }, body: MINIMAL_OFFER });
  assert.notEqual(r.status, 201);
  assert.ok([404, 405].includes(r.status), `status ${r.status}`);
  const options = await fetch(url, { method: 'OPTIONS' });
  assert.equal(options.headers.get('accept-post'), null);
  await sleep(0);
});
