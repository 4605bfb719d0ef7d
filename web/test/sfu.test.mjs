// The SFU counterpart of issue 17, tested on its own: Debian's Janus (VideoRoom) behind the
// tests' WHIP front-end, a headless Chromium publishing through the `whip-whep` npm package's
// WHIP client, and two Chromium subscribers that receive the stream from Janus and decode it.
// Everything listens on 127.0.0.1. spyglass is not involved: this proves the harness pieces that
// spyglass's WHIP tests use.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileFixture, until } from './harness.mjs';
import { Janus } from './standards/janus.mjs';
import { WhipFrontend } from './standards/whip-frontend.mjs';
import { PageServer, PICTURE, publishWhip, subscribeJanus, watchRoom } from './standards/pages.mjs';

const fixture = fileFixture({ browser: true });
const { cleanups } = fixture;

async function startSfu(options = {}) {
  const janus = await Janus.start();
  cleanups.push(() => janus.close());
  const whip = await WhipFrontend.start({ janus, ...options });
  cleanups.push(() => whip.close());
  const pages = await PageServer.start();
  cleanups.push(() => pages.close());
  return { janus, whip, pages };
}

const near = (got, want, tol = 60) => got.every((v, i) => Math.abs(v - want[i]) <= tol);

test('Chromium publishes over WHIP into Janus; two Chromium subscribers decode it from Janus', async (t) => {
  const token = 'test-token-17';
  const { janus, whip, pages } = await startSfu({ token });
  const room = 'cam-sfu';
  const watcher = await watchRoom(janus, room);
  cleanups.push(() => watcher.close());

  const publisher = await publishWhip(fixture.browser.context, pages, { url: whip.endpoint(room), token });
  cleanups.push(() => publisher.stop());
  const feed = await watcher.next();
  // Both subscribers join as soon as Janus announces the feed, like viewers already waiting.
  const subscribers = await Promise.all([0, 1].map(async () => {
    const s = await subscribeJanus(fixture.browser.context, pages, janus, room, feed);
    cleanups.push(() => s.close());
    return s;
  }));
  const firsts = [];
  for (const [i, s] of subscribers.entries()) {
    const st = await until(`subscriber ${i} decodes frames`, async () => {
      const x = await s.stats();
      return x.framesDecoded > 0 && x.videoWidth > 0 && x.firstFrameAt ? x : null;
    }, 30000);
    assert.deepEqual([st.videoWidth, st.videoHeight], [320, 240]);
    firsts.push(st.firstFrameAt - publisher.postAt);
    // The picture that left the publisher's canvas: red left, blue right.
    const left = await s.pixel(80, 100);
    const right = await s.pixel(240, 100);
    assert.ok(near(left, PICTURE.left) && near(right, PICTURE.right), `decoded colours: left ${left}, right ${right}`);
    await until(`subscriber ${i} receives audio`, async () => (await s.stats()).audioPackets > 0);
  }
  const line = `WHIP POST -> first decoded frame at the subscribers: ${firsts.map((ms) => `${ms} ms`).join(', ')}`;
  t.diagnostic(line);
  console.log(line);

  // The WHIP exchange as the publisher saw it: 201 with a Location, then trickle PATCHes (204).
  const ex = await publisher.exchanges();
  const post = ex.find((x) => x.method === 'POST');
  assert.equal(post.status, 201);
  assert.match(post.location, new RegExp(`^/whip/${room}/[0-9a-f]{16}$`));
  assert.ok(ex.some((x) => x.method === 'PATCH' && x.status === 204), `a trickle PATCH: ${JSON.stringify(ex)}`);
  const [session] = whip.sessions.values();
  assert.ok(session.webrtcup, 'Janus reports the publisher\'s PeerConnection up');
  // Chromium trickled its candidates (mDNS names unless loopback); only loopback ones reach Janus.
  assert.ok(session.trickled + session.dropped.length > 0, 'the PATCH bodies carried candidates');
  assert.ok(session.dropped.every((c) => !/ 127\.0\.0\.1 /.test(c)), `dropped: ${session.dropped}`);

  // PATCH rules on the live session: ICE restarts are refused (422), a stale ETag is 412, a wrong
  // content type 415, the token is checked; none of them disturbs the session.
  const resource = new URL(post.location, whip.origin).href;
  const patch = (headers, body = 'a=end-of-candidates\r\n') => fetch(resource, {
    method: 'PATCH', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/trickle-ice-sdpfrag', ...headers }, body,
  }).then((r) => r.status);
  assert.equal(await patch({ 'if-match': '*' }, 'a=ice-ufrag:new1\r\na=ice-pwd:newnewnewnewnewnewnewnew\r\n'), 422);
  assert.equal(await patch({ 'if-match': '"0000000000000000"' }), 412);
  assert.equal(await patch({ 'content-type': 'text/plain' }), 415);
  assert.equal(await patch({ authorization: 'Bearer nope' }), 401);
  assert.equal(await patch({ 'if-match': session.etag }), 204);
  assert.equal(await publisher.connectionState(), 'connected');
  const again = await subscribers[0].stats();
  await until('frames still decoded', async () => (await subscribers[0].stats()).framesDecoded > again.framesDecoded);

  // DELETE ends the publication: the session is gone and Janus no longer lists the feed.
  await publisher.stop();
  assert.equal(whip.sessions.size, 0);
  const probe = await (await janus.session()).attach();
  const { participants } = await probe.request({ request: 'listparticipants', room });
  assert.deepEqual(participants.filter((p) => p.publisher), []);
  await probe.session.destroy();
});

test('the WHIP front-end refuses bad requests with the right status and changes nothing', async () => {
  const { whip } = await startSfu({ token: 'secret' });
  const url = whip.endpoint('cam-bad');
  const post = (headers, body) => fetch(url, { method: 'POST', headers, body });
  const sdp = { 'content-type': 'application/sdp' };
  assert.equal((await post(sdp, 'v=0\r\n')).status, 401);
  assert.equal((await post({ ...sdp, authorization: 'Bearer wrong' }, 'v=0\r\n')).status, 401);
  const auth = { authorization: 'Bearer secret' };
  assert.equal((await post({ ...auth, 'content-type': 'text/plain' }, 'v=0\r\n')).status, 415);
  assert.equal((await post({ ...auth, ...sdp }, 'hello')).status, 400);
  assert.equal((await post({ ...auth, ...sdp }, 'v=0\r\n' + 'a=x\r\n'.repeat(20000))).status, 413);
  // Janus itself refuses an SDP without media.
  const bad = await post({ ...auth, ...sdp }, 'v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n');
  assert.equal(bad.status, 400, await bad.text());
  assert.equal((await fetch(`${url}/0123456789abcdef`, { method: 'DELETE', headers: auth })).status, 404);
  assert.equal((await fetch(`${url}/0123456789abcdef`, {
    method: 'PATCH', headers: { ...auth, 'content-type': 'application/trickle-ice-sdpfrag' }, body: 'a=end-of-candidates\r\n',
  })).status, 404);
  assert.equal((await fetch(url, { method: 'GET', headers: auth })).status, 405);
  const options = await fetch(url, { method: 'OPTIONS' });
  assert.equal(options.status, 204);
  assert.equal(options.headers.get('accept-post'), 'application/sdp');
  assert.equal(whip.sessions.size, 0);
});
