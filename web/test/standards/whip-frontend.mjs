// A WHIP endpoint (RFC 9725) in front of the tests' Janus: `POST /whip/ROOM` with an SDP offer
// publishes it into the VideoRoom ROOM (made on first use) and answers 201 with Janus's SDP
// answer and a `Location` for the session; `PATCH` on that location trickles candidates
// (application/trickle-ice-sdpfrag); `DELETE` ends the publication. Optional bearer token.
// Listens on 127.0.0.1 only.
//
// Test-side only: it forwards to Janus just the candidates whose address is a loopback one (the
// tests' network rules); the others (mDNS names, the host's other addresses) are counted in
// `dropped` and not passed on. Janus then learns the publisher's loopback address from its
// connectivity checks (a peer-reflexive candidate).

import http from 'node:http';
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { ensureRoom, JanusError } from './janus.mjs';

const MAX_BODY = 64 * 1024;

/** The `a=mid` values of an SDP's m-sections, in order (index = sdpMLineIndex). */
export function sdpMids(sdp) {
  const mids = [];
  let inMedia = false;
  for (const line of sdp.split(/\r?\n/)) {
    if (line.startsWith('m=')) {
      inMedia = true;
      mids.push(null);
    } else if (inMedia && line.startsWith('a=mid:')) {
      mids[mids.length - 1] = line.slice(6).trim();
    }
  }
  return mids;
}

/** The first `a=ice-ufrag` of an SDP or SDP fragment, or null. */
export function iceUfrag(sdp) {
  const m = /^a=ice-ufrag:(.*)$/m.exec(sdp);
  return m ? m[1].trim() : null;
}

/**
 * An application/trickle-ice-sdpfrag body (RFC 8840) as `{ ufrag, candidates: [{candidate,
 * sdpMid}], ended }`.
 */
export function parseSdpFrag(body) {
  const out = { ufrag: null, pwd: null, candidates: [], ended: false };
  let mid = null;
  for (const raw of body.split(/\r?\n/)) {
    const line = raw.trim();
    if (line.startsWith('m=')) mid = null;
    else if (line.startsWith('a=mid:')) mid = line.slice(6);
    else if (line.startsWith('a=ice-ufrag:')) out.ufrag = line.slice(12);
    else if (line.startsWith('a=ice-pwd:')) out.pwd = line.slice(10);
    else if (line.startsWith('a=candidate:')) out.candidates.push({ candidate: line.slice(2), sdpMid: mid });
    else if (line === 'a=end-of-candidates') out.ended = true;
  }
  return out;
}

/** The connection address of an ICE candidate line ("candidate:f c proto prio ADDR port typ ..."). */
export function candidateAddress(candidate) {
  return candidate.replace(/^a=/, '').split(/\s+/)[4] ?? '';
}

export const isLoopback = (address) => /^127\./.test(address) || address === '::1';

export class WhipFrontend extends EventEmitter {
  /**
   * Options: `janus` (a started Janus), `token` (bearer token, or none), `room` (VideoRoom
   * create options: publishers, videocodec, audiocodec).
   */
  static async start(options) {
    const f = new WhipFrontend();
    f.janus = options.janus;
    f.token = options.token ?? null;
    f.roomOptions = options.room ?? {};
    f.sessions = new Map();
    f.exchanges = [];
    f.server = http.createServer((req, res) => {
      f.handle(req, res).catch((e) => {
        if (!res.headersSent) f.reply(res, 500, {}, `internal error: ${e.message}`);
      });
    });
    await new Promise((resolve, reject) => {
      f.server.once('error', reject);
      f.server.listen(0, '127.0.0.1', resolve);
    });
    f.port = f.server.address().port;
    return f;
  }

  get origin() { return `http://127.0.0.1:${this.port}`; }

  /** The WHIP endpoint URL of `room`. */
  endpoint(room) { return `${this.origin}/whip/${encodeURIComponent(room)}`; }

  reply(res, status, headers, body = '') {
    res.writeHead(status, {
      'access-control-allow-origin': '*',
      'access-control-expose-headers': 'Location, Link, ETag, Accept-Post, Accept-Patch',
      ...headers,
    });
    res.end(body);
  }

  async readBody(req) {
    const chunks = [];
    let size = 0;
    for await (const c of req) {
      size += c.length;
      if (size > MAX_BODY) return null;
      chunks.push(c);
    }
    return Buffer.concat(chunks).toString('utf8');
  }

  async handle(req, res) {
    const url = new URL(req.url, this.origin);
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const record = { method: req.method, path: url.pathname, at: Date.now() };
    this.exchanges.push(record);
    const send = (status, headers = {}, body = '') => {
      record.status = status;
      this.reply(res, status, headers, body);
    };
    if (parts[0] !== 'whip' || parts.length < 2 || parts.length > 3) return send(404, {}, 'no such endpoint');

    if (req.method === 'OPTIONS') {
      return send(204, {
        'access-control-allow-methods': 'POST, PATCH, DELETE, OPTIONS',
        'access-control-allow-headers': 'Authorization, Content-Type, If-Match',
        ...(parts.length === 2 ? { 'accept-post': 'application/sdp' } : { 'accept-patch': 'application/trickle-ice-sdpfrag' }),
      });
    }
    if (this.token && req.headers.authorization !== `Bearer ${this.token}`) {
      return send(401, { 'www-authenticate': 'Bearer' }, 'bad or missing bearer token');
    }
    if (parts.length === 2) {
      if (req.method !== 'POST') return send(405, { allow: 'POST, OPTIONS' });
      return this.publish(req, parts[1], record, send);
    }
    const session = this.sessions.get(parts[2]);
    if (!session || session.room !== parts[1]) return send(404, {}, 'no such session');
    if (req.method === 'PATCH') return this.patch(req, session, send);
    if (req.method === 'DELETE') {
      await this.end(session);
      return send(200);
    }
    return send(405, { allow: 'PATCH, DELETE, OPTIONS' });
  }

  async publish(req, room, record, send) {
    if (!/^application\/sdp\b/i.test(req.headers['content-type'] ?? '')) return send(415, {}, 'application/sdp expected');
    const offer = await this.readBody(req);
    if (offer === null) return send(413, {}, `an offer is at most ${MAX_BODY} bytes`);
    if (!offer.startsWith('v=0')) return send(400, {}, 'not an SDP offer');
    const postAt = record.at;
    const janusSession = await this.janus.session();
    try {
      const handle = await janusSession.attach('janus.plugin.videoroom');
      await ensureRoom(handle, room, this.roomOptions);
      const { data, jsep } = await handle.message(
        { request: 'joinandconfigure', room, ptype: 'publisher', display: 'whip', audio: true, video: true },
        { type: 'offer', sdp: offer },
      );
      if (!jsep) throw new JanusError(0, 'no answer from Janus');
      const id = randomBytes(8).toString('hex');
      const session = {
        id, room, feedId: data.id, janusSession, handle, offer, answer: jsep.sdp,
        mids: sdpMids(offer), ufrag: iceUfrag(offer), etag: `"${id}"`,
        postAt, answeredAt: Date.now(), trickled: 0, dropped: [], webrtcup: null,
      };
      handle.on('webrtcup', () => {
        session.webrtcup = Date.now();
        this.emit('webrtcup', session);
      });
      this.sessions.set(id, session);
      this.emit('publish', session);
      const location = `/whip/${encodeURIComponent(room)}/${id}`;
      record.location = location;
      return send(201, { 'content-type': 'application/sdp', location, etag: session.etag }, jsep.sdp);
    } catch (e) {
      await janusSession.destroy();
      if (e instanceof JanusError) {
        // Janus refused the offer (bad SDP, room full...): the client's fault or capacity.
        const status = e.code === 432 ? 503 : 400;
        return send(status, {}, e.message);
      }
      throw e;
    }
  }

  async patch(req, session, send) {
    if (!/^application\/trickle-ice-sdpfrag\b/i.test(req.headers['content-type'] ?? '')) {
      return send(415, {}, 'application/trickle-ice-sdpfrag expected');
    }
    const body = await this.readBody(req);
    if (body === null) return send(413, {}, `a fragment is at most ${MAX_BODY} bytes`);
    const frag = parseSdpFrag(body);
    const ifMatch = req.headers['if-match'];
    // An ICE restart (If-Match: * or new credentials): Janus could, this front-end does not.
    if (ifMatch === '*' || (frag.ufrag && frag.ufrag !== session.ufrag)) {
      return send(422, {}, 'ICE restarts are not supported');
    }
    if (ifMatch && ifMatch !== session.etag) return send(412, {}, 'ETag mismatch');
    const forward = [];
    for (const c of frag.candidates) {
      if (!isLoopback(candidateAddress(c.candidate))) {
        session.dropped.push(c.candidate);
        continue;
      }
      const index = session.mids.indexOf(c.sdpMid);
      forward.push({ candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: index < 0 ? 0 : index });
    }
    if (forward.length) await session.handle.trickle(forward);
    if (frag.ended) await session.handle.trickle({ completed: true });
    session.trickled += forward.length;
    return send(204);
  }

  async end(session) {
    this.sessions.delete(session.id);
    await session.handle.detach();
    await session.janusSession.destroy();
  }

  async close() {
    for (const s of [...this.sessions.values()]) await this.end(s);
    const closed = new Promise((r) => this.server.close(r));
    this.server.closeAllConnections();
    await closed;
  }
}
