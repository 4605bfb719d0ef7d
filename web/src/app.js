// The spyglass viewer page: finds cameras by their retained status over MQTT 5 (WebSocket),
// plays one over WebRTC, and keeps playing it across broker drops, device restarts and changes of
// its own network (an ICE restart on the same connection).
// The signaling is docs/PROTOCOL.md, followed exactly; the latency overlay reads the test
// pattern's code (docs/TEST_PATTERN.md) from decoded frames.

import mqtt from 'mqtt';
import { codeBox, readCode } from './pattern.js';

const $ = (id) => document.getElementById(id);
const video = $('video');
const params = new URLSearchParams(location.search);

/** What tests and curious users can look at: `window.spyglass` in the console. */
const view = {
  state: 'loading',
  message: '',
  broker: null,
  deviceId: null,
  devices: new Map(), // uid -> online status object
  session: null,
  sessions: 0, // sessions started since the page loaded
  iceRestarts: 0, // ICE restarts made since the page loaded (the connection was lost)
  frames: 0, // frames shown since the page loaded
  frameTimes: [], // Date.now() of the last frames shown (at most 600)
  // firstFrameMs: offer -> first frame per session; stages: per session, ms after the offer at
  // which the answer arrived, ICE and DTLS connected and the first frame was shown.
  // reconnectMs: per ICE restart, ms from its offer to connected again.
  metrics: { firstFrameMs: [], latencyMs: [], stages: [], reconnectMs: [] },
  lastCode: null, // { frame, captureMs, latencyMs } from the newest decoded frame
  pc: null,
  // The device's newest stats push for this session (docs/PROTOCOL.md "Stats object"): its
  // bandwidth estimate for this viewer, the layers it sends, retransmissions. While the overlay
  // is open the page subscribes to them.
  deviceStats: null,
};
window.spyglass = view;

function setState(state, message) {
  view.state = state;
  view.message = message;
  document.body.dataset.state = state;
  $('status-text').textContent = message;
}

function randomHex(bytes) {
  const a = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

// --------------------------------------------------------------------------------------------
// Configuration: /config.json from the spyglass that served the page; ?broker=…&id=… override.

async function loadConfig() {
  let config = {};
  try {
    const response = await fetch('config.json', { cache: 'no-store' });
    if (response.ok) config = await response.json();
  } catch {
    // Hosted somewhere else: the URL parameters must say everything.
  }
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const host = location.hostname.includes(':') ? `[${location.hostname}]` : location.hostname;
  const derived = host && config.broker_ws_port ? `${scheme}://${host}:${config.broker_ws_port}` : null;
  return {
    broker: params.get('broker') || config.broker || derived,
    id: params.get('id') || config.id || null,
    username: params.get('username') || '',
    // Static ICE servers (a public STUN server, say): RTCIceServer objects. The device may hand
    // out more, TURN with short-lived credentials among them (see requestIceServers).
    iceServers: Array.isArray(config.ice_servers) ? config.ice_servers : [],
  };
}

// --------------------------------------------------------------------------------------------
// MQTT: one client for the page's lifetime (mqtt.js reconnects by itself).

let client = null;
let credentials = { username: '', password: '' };
let staticIceServers = [];
// The page's CID is also its MQTT client id, so that a broker ACL can tie a viewer's topics to
// its connection (`{uid}/offer/%c`, docs/SECURITY.md). A new session on the same CID replaces
// the previous one on the device.
const pageCid = `web-${randomHex(8)}`;

// UIDs may have several levels; devices are found up to four levels deep. The chosen device's
// own status topic is always subscribed, however deep.
const STATUS_FILTERS = ['+/status', '+/+/status', '+/+/+/status', '+/+/+/+/status'];

function connect(broker) {
  if (client) client.end(true);
  view.broker = broker;
  $('broker-url').value = broker;
  setState('connecting', `Connecting to the broker ${broker}…`);
  const options = {
    protocolVersion: 5,
    clientId: pageCid,
    clean: true,
    reconnectPeriod: 2000,
    connectTimeout: 8000,
    resubscribe: true,
  };
  if (credentials.username) options.username = credentials.username;
  if (credentials.password) options.password = credentials.password;
  const c = mqtt.connect(broker, options);
  client = c;
  c.on('connect', async () => {
    if (c !== client) return;
    console.log('spyglass: broker connected');
    const filters = [...STATUS_FILTERS];
    if (view.deviceId) filters.push(`${view.deviceId}/status`);
    try {
      await c.subscribeAsync(filters, { qos: 1, nl: true });
    } catch (err) {
      setState('error', `The broker refused the subscription: ${err.message}`);
      return;
    }
    if (view.state === 'connecting' || view.state === 'error') refresh();
  });
  c.on('message', (topic, payload) => {
    if (c === client) onMessage(topic, payload);
  });
  c.on('error', (err) => {
    if (c !== client) return;
    const code = err && err.code;
    if (code === 134 || code === 135 || code === 4 || code === 5) {
      c.end(true);
      setState('error', `The broker refused the connection: ${err.message}. Check the user name and password.`);
      openPanel(true);
      $('broker-settings').open = true;
    }
  });
  c.on('close', () => console.log('spyglass: broker connection closed'));
  c.on('offline', () => {
    if (c === client && view.state !== 'live') {
      setState('connecting', `Cannot reach the broker ${broker}; retrying…`);
    }
  });
}

function publish(topic, message) {
  client.publish(topic, JSON.stringify(message), { qos: 1 });
}

function onMessage(topic, payload) {
  const session = view.session;
  if (session) {
    const kind = Object.keys(session.topics).find((k) => session.topics[k] === topic);
    if (kind) {
      onSessionMessage(session, kind, payload);
      return;
    }
  }
  if (topic.endsWith('/status')) onStatus(topic.slice(0, -'/status'.length), payload);
}

function parse(payload) {
  try {
    return JSON.parse(new TextDecoder().decode(payload));
  } catch {
    return null;
  }
}

// --------------------------------------------------------------------------------------------
// Devices

function onStatus(uid, payload) {
  const status = parse(payload);
  // Only a well-formed status counts (the wildcards also match other topics).
  if (status && status.online === true && status.video && typeof status.viewers === 'number') {
    view.devices.set(uid, status);
  } else if (payload.length === 0 || (status && status.online === false)) {
    view.devices.delete(uid);
  } else {
    return;
  }
  renderDevices();
  if (uid === view.deviceId) refresh();
}

function describe(status) {
  const v = status.video;
  const audio = status.audio ? ', audio' : '';
  return `${v.width}x${v.height} ${v.codec} ${v.fps} fps${audio} · ${status.viewers}/${status.max_viewers} viewers`;
}

function renderDevices() {
  const list = $('device-list');
  list.replaceChildren();
  for (const [uid, status] of [...view.devices].sort(([a], [b]) => a.localeCompare(b))) {
    const item = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.uid = uid;
    if (uid === view.deviceId) button.setAttribute('aria-current', 'true');
    const name = document.createElement('span');
    name.textContent = uid;
    const detail = document.createElement('span');
    detail.className = 'device-detail';
    detail.textContent = describe(status);
    button.append(name, detail);
    button.addEventListener('click', () => choose(uid));
    item.append(button);
    list.append(item);
  }
  $('unmute-button').disabled = !currentStatus()?.audio;
}

function currentStatus() {
  return view.deviceId ? view.devices.get(view.deviceId) : undefined;
}

function choose(uid) {
  if (uid === view.deviceId && view.session) return;
  endSession();
  view.deviceId = uid;
  params.set('id', uid);
  history.replaceState(null, '', `?${params}`);
  if (client && client.connected) client.subscribe(`${uid}/status`, { qos: 1, nl: true });
  openPanel(false);
  renderDevices();
  refresh();
}

/** Decide what to do from what is known: the chosen device's status and the session. */
function refresh() {
  if (!client || !client.connected) return;
  if (!view.deviceId) {
    setState('choose', 'Choose a camera.');
    openPanel(true);
    return;
  }
  const status = currentStatus();
  if (!status) {
    if (view.session) endSession();
    setState('offline', `Camera ${view.deviceId} is offline. Waiting for it to come back…`);
    return;
  }
  if (view.session) return;
  if (view.state === 'busy' && status.viewers >= status.max_viewers) return;
  if (view.state === 'error' && view.retryAt > Date.now()) return;
  startSession(view.deviceId, status);
}

// --------------------------------------------------------------------------------------------
// A session: one peer connection with one CID (docs/PROTOCOL.md, "Sessions and ordering").

async function startSession(uid, status) {
  const cid = pageCid;
  const session = {
    uid,
    cid,
    pc: null,
    remoteCandidates: [], // held until the answer is set
    answered: false,
    offerAt: 0,
    firstFrame: false,
    stages: {},
    stream: new MediaStream(),
    disconnectTimer: 0,
    restartAt: 0, // when the ICE restart under way sent its offer (performance.now())
    restartTimer: 0,
    iceServersWaiter: null,
  };
  const topic = (kind) => `${uid}/${kind}/${cid}`;
  session.topics = {
    offer: topic('offer'),
    answer: topic('answer'),
    ice: topic('ice'),
    error: topic('error'),
    iceServers: topic('ice-servers'),
  };
  view.session = session;
  view.sessions += 1;
  setState('starting', `Connecting to ${uid}…`);

  // 1. Subscribe first, and wait for the SUBACK.
  try {
    await client.subscribeAsync(sessionFilters(session), { qos: 1, nl: true });
  } catch (err) {
    failSession(session, `The broker refused the subscription: ${err.message}`);
    return;
  }
  if (view.session !== session) return;

  // ICE servers: the page's own (config.json), and the device's when its status says it hands
  // them out (TURN with short-lived credentials, on this CID's own topic).
  const granted = status.ice_servers ? await requestIceServers(session) : [];
  if (view.session !== session) return;
  const pc = new RTCPeerConnection({ iceServers: iceServers(granted) });
  session.pc = pc;
  view.pc = pc;
  pc.addTransceiver('video', { direction: 'recvonly' });
  if (status.audio) pc.addTransceiver('audio', { direction: 'recvonly' });
  session.channel = openChannel(session, pc.createDataChannel('spyglass'));
  pc.ontrack = (event) => {
    session.stream.addTrack(event.track);
    video.srcObject = session.stream;
    video.play().catch(() => {});
  };
  // 3. Trickle ICE: each candidate as the browser finds it, then {"candidate":""}.
  pc.onicecandidate = (event) => {
    if (view.session !== session) return;
    const c = event.candidate;
    publish(session.topics.ice, c && c.candidate ? c.toJSON() : { candidate: '' });
  };
  pc.oniceconnectionstatechange = () => {
    console.log(`spyglass: ICE ${pc.iceConnectionState}`);
    if (pc.iceConnectionState === 'connected') mark(session, 'ice');
  };
  pc.onconnectionstatechange = () => {
    if (view.session !== session) return;
    const s = pc.connectionState;
    console.log(`spyglass: connection ${s}`);
    if (s === 'connected') {
      mark(session, 'connected');
      watchTraffic(session);
      reconnected(session);
    }
    clearTimeout(session.disconnectTimer);
    if (s === 'closed') {
      restartSession(session, `The connection to ${uid} was lost; reconnecting…`);
    } else if (s === 'failed') {
      restartIce(session);
    } else if (s === 'disconnected') {
      // Often a short gap; if it lasts, the network has probably changed under us.
      session.disconnectTimer = setTimeout(() => restartIce(session), DISCONNECTED_GRACE_MS);
    }
  };

  // 2. Offer.
  await pc.setLocalDescription(await pc.createOffer());
  if (view.session !== session) return;
  session.offerAt = performance.now();
  publish(session.topics.offer, { type: 'offer', sdp: pc.localDescription.sdp });
}

/** The page's static ICE servers and the device's, each once. */
function iceServers(granted) {
  const seen = new Set();
  return [...staticIceServers, ...granted].filter((server) => {
    const key = JSON.stringify([server.urls, server.username ?? null]);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** An ICE restart under way has a working path again. */
function reconnected(session) {
  if (view.session !== session || !session.restartAt || !session.answered) return;
  const ms = Math.round(performance.now() - session.restartAt);
  console.log(`spyglass: connected again ${ms} ms after the ICE restart`);
  view.metrics.reconnectMs.push(ms);
  session.restartAt = 0;
  clearTimeout(session.restartTimer);
  setState('live', `Live: ${session.uid}`);
}

/** Subscriptions of one session: its replies, on topics ending in its CID. */
function sessionFilters(session) {
  const t = session.topics;
  return [t.answer, t.ice, t.error, t.iceServers];
}

const ICE_SERVERS_WAIT_MS = 3000;
const DISCONNECTED_GRACE_MS = 2000;
const RESTART_ANSWER_WAIT_MS = 8000;
const MAX_ICE_RESTARTS = 5;

/**
 * Asks the device for ICE servers on this CID's topic (docs/PROTOCOL.md, "ICE servers") and
 * waits for the reply: its list (STUN, TURN with credentials valid for `ttl` seconds), or none
 * when it refuses or does not answer in time.
 */
function requestIceServers(session) {
  return new Promise((resolve) => {
    const done = (servers) => {
      clearTimeout(timer);
      session.iceServersWaiter = null;
      resolve(servers);
    };
    const timer = setTimeout(() => {
      console.warn('spyglass: the camera did not hand out ICE servers in time');
      done([]);
    }, ICE_SERVERS_WAIT_MS);
    session.iceServersWaiter = (reply) => {
      if (reply.error) console.warn(`spyglass: ICE servers refused: ${reply.error.message}`);
      done(Array.isArray(reply.iceServers) ? reply.iceServers : []);
    };
    console.log('spyglass: asking the camera for ICE servers');
    publish(session.topics.iceServers, {});
  });
}

/**
 * The connection was lost after it worked (a phone moving from Wi-Fi to LTE, a laptop changing
 * networks): restart ICE on the same peer connection and CID. The camera applies the new offer
 * to the same session (docs/PROTOCOL.md, "Replacing a session"): the picture comes back without a
 * new DTLS handshake or a new session. If that does not work, a new session.
 */
async function restartIce(session) {
  if (view.session !== session || session.restartAt || !session.pc) return;
  const uid = session.uid;
  if (session.restarts >= MAX_ICE_RESTARTS) {
    restartSession(session, `The connection to ${uid} was lost; reconnecting…`);
    return;
  }
  session.restarts = (session.restarts || 0) + 1;
  view.iceRestarts += 1;
  session.restartAt = performance.now();
  console.log('spyglass: restarting ICE on the same connection');
  setState('starting', `The connection to ${uid} was lost; reconnecting…`);
  const fallBack = () => restartSession(session, `The connection to ${uid} was lost; reconnecting…`);
  session.restartTimer = setTimeout(() => {
    if (view.session === session && session.restartAt) fallBack();
  }, RESTART_ANSWER_WAIT_MS + ICE_SERVERS_WAIT_MS);
  try {
    // A network change that broke ICE has probably broken the broker connection too, which
    // mqtt.js would notice only at its next keepalive (a minute): a new one, at once (cheaper
    // than waiting to find out; harmless when the old one was fine).
    await reconnectBroker();
    if (view.session !== session) return;
    // Subscribed again before anything is asked (mqtt.js renews them only after its queue).
    const filters = sessionFilters(session);
    await client.unsubscribeAsync(filters).catch(() => {});
    await client.subscribeAsync(filters, { qos: 1, nl: true }).catch(() => {});
    if (view.session !== session) return;
    // Fresh credentials: the old ones may have expired, and new TURN allocations need them.
    if (currentStatus()?.ice_servers) {
      const granted = await requestIceServers(session);
      if (view.session !== session) return;
      if (granted.length) {
        session.pc.setConfiguration({ ...session.pc.getConfiguration(), iceServers: iceServers(granted) });
      }
    }
    session.pc.restartIce();
    await session.pc.setLocalDescription(await session.pc.createOffer());
    if (view.session !== session) return;
    session.answered = false;
    session.remoteCandidates = [];
    publish(session.topics.offer, { type: 'offer', sdp: session.pc.localDescription.sdp });
    console.log('spyglass: ICE restart offer sent');
  } catch (err) {
    console.warn(`spyglass: ICE restart failed: ${err.message}`);
    fallBack();
  }
}

const BROKER_RECONNECT_MS = 10000;

const NO_TRAFFIC_MS = 3000;

/**
 * Restart ICE when nothing at all has arrived for NO_TRAFFIC_MS while connected: the camera's
 * consent checks and RTCP come every few seconds even when the picture is still, so silence means
 * the path is gone (a network change). Chromium itself may take much longer to say
 * "disconnected" (16 s was seen after a move), and the camera gives a vanished viewer 10 s.
 */
function watchTraffic(session) {
  if (session.trafficTimer) return;
  let bytes = -1;
  let since = performance.now();
  session.trafficTimer = setInterval(async () => {
    const pc = session.pc;
    if (view.session !== session || !pc) return clearInterval(session.trafficTimer);
    if (session.restartAt || pc.connectionState !== 'connected') {
      since = performance.now();
      return;
    }
    let now = 0;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'transport') now += s.bytesReceived ?? 0;
    });
    if (now !== bytes) {
      bytes = now;
      since = performance.now();
    } else if (performance.now() - since > NO_TRAFFIC_MS) {
      console.log(`spyglass: nothing received for ${NO_TRAFFIC_MS / 1000} s`);
      restartIce(session);
    }
  }, 1000);
}

/** Drop the broker connection and make a new one (the subscriptions are renewed with it). */
function reconnectBroker() {
  const c = client;
  console.log('spyglass: connecting to the broker again');
  return new Promise((resolve) => {
    const timer = setTimeout(done, BROKER_RECONNECT_MS);
    function done() {
      clearTimeout(timer);
      c.removeListener('connect', done);
      resolve();
    }
    c.once('connect', done);
    c.end(true, () => c.reconnect());
  });
}

async function onSessionMessage(session, kind, payload) {
  const message = parse(payload);
  if (!message) return;
  if (kind === 'iceServers') {
    // Our own request, echoed by a broker that ignores No-Local, has no iceServers.
    if ('iceServers' in message && session.iceServersWaiter) session.iceServersWaiter(message);
    return;
  }
  if (kind === 'answer' && message.type === 'answer' && !session.answered) {
    session.answered = true;
    mark(session, 'answer');
    if (session.restartAt) console.log('spyglass: answer to the ICE restart');
    try {
      await session.pc.setRemoteDescription({ type: 'answer', sdp: message.sdp });
      const dtls = session.pc.getTransceivers()[0]?.receiver.transport;
      if (dtls && !session.dtlsWatched) {
        session.dtlsWatched = true;
        dtls.addEventListener('statechange', () => {
          if (dtls.state === 'connected') mark(session, 'dtls');
        });
        // After an ICE restart the connection may never have left "connected" (the page noticed
        // the silence first): the new pair's selection says that it is back.
        dtls.iceTransport?.addEventListener('selectedcandidatepairchange', () => reconnected(session));
      }
      for (const c of session.remoteCandidates) await addCandidate(session, c);
      session.remoteCandidates = [];
    } catch (err) {
      if (session.restartAt) {
        // The camera no longer had the session (it started a new one): start afresh too.
        restartSession(session, `Reconnecting to ${session.uid}…`);
      } else {
        failSession(session, `The camera's answer was not accepted: ${err.message}`);
      }
    }
  } else if (kind === 'ice') {
    if (session.answered && session.pc.remoteDescription) await addCandidate(session, message);
    else session.remoteCandidates.push(message);
  } else if (kind === 'error') {
    const text = typeof message.message === 'string' ? message.message : 'unknown error';
    if (message.code === 'busy') {
      endSession();
      setState('busy', `Camera ${session.uid} is busy: ${text}. Waiting for a free place…`);
    } else {
      failSession(session, `Camera ${session.uid} refused: ${text} (${message.code})`);
    }
  }
}

/** Notes the time (ms after the offer) at which a session first reached a stage. */
function mark(session, stage) {
  if (session.offerAt && !(stage in session.stages)) {
    session.stages[stage] = Math.round(performance.now() - session.offerAt);
  }
}

async function addCandidate(session, c) {
  if (view.session !== session) return;
  try {
    // An empty candidate is the end of candidates; browsers take it as such.
    await session.pc.addIceCandidate(c.candidate ? c : { candidate: '', sdpMid: c.sdpMid ?? '0', sdpMLineIndex: c.sdpMLineIndex ?? 0 });
  } catch {
    // A candidate the browser cannot use is not fatal: ICE goes on with the others.
  }
}

function endSession() {
  const session = view.session;
  if (!session) return;
  view.session = null;
  view.pc = null;
  view.deviceStats = null;
  clearTimeout(session.disconnectTimer);
  clearTimeout(session.restartTimer);
  clearInterval(session.trafficTimer);
  if (session.iceServersWaiter) session.iceServersWaiter({ iceServers: [] });
  if (session.channel) session.channel.close();
  $('snapshot-button').disabled = true;
  $('picture-button').disabled = true;
  if (session.pc) session.pc.close();
  if (client && client.connected) client.unsubscribe(sessionFilters(session));
}

function failSession(session, message) {
  if (view.session !== session) return;
  endSession();
  view.retryAt = Date.now() + 5000;
  setState('error', `${message}. Trying again shortly.`);
  setTimeout(refresh, 5100);
}

function restartSession(session, message) {
  if (view.session !== session) return;
  endSession();
  setState('starting', message);
  setTimeout(refresh, 1000);
}

// --------------------------------------------------------------------------------------------
// Frames: the first one makes the state "live"; with the overlay on, each is read for its code.

const canvas = document.createElement('canvas');
const context = canvas.getContext('2d', { willReadFrequently: true });
let statsVisible = false;

function onVideoFrame(_now, meta) {
  const session = view.session;
  if (session && video.videoWidth > 0) {
    if (session.restartAt) reconnected(session);
    view.frames += 1;
    view.frameTimes.push(Date.now());
    if (view.frameTimes.length > 600) view.frameTimes.shift();
  }
  if (session && !session.firstFrame && video.videoWidth > 0) {
    session.firstFrame = true;
    const ms = Math.round(performance.now() - session.offerAt);
    view.metrics.firstFrameMs.push(ms);
    session.stages.frame = ms;
    view.metrics.stages.push(session.stages);
    console.log(`spyglass: first frame ${ms} ms after the offer`);
    setState('live', `Live: ${session.uid}`);
  }
  if (statsVisible && session) readFrame(meta);
  video.requestVideoFrameCallback(onVideoFrame);
}

function readFrame(meta) {
  const box = codeBox(video.videoWidth, video.videoHeight);
  if (!box) return;
  // The wall-clock time at which this frame went to the screen.
  const shownAt = Date.now() - (performance.now() - meta.presentationTime);
  canvas.width = box.width;
  canvas.height = box.height;
  context.drawImage(video, 0, 0, box.width, box.height, 0, 0, box.width, box.height);
  const code = readCode(context.getImageData(0, 0, box.width, box.height).data, box.width, box.b);
  if (!code) return;
  const latencyMs = Math.round(shownAt - code.captureMs);
  view.lastCode = { ...code, latencyMs };
  const lat = view.metrics.latencyMs;
  lat.push(latencyMs);
  if (lat.length > 300) lat.shift();
}

if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) {
  video.requestVideoFrameCallback(onVideoFrame);
} else {
  // Without it (old browsers) "live" follows playback, and there is no latency reading.
  video.addEventListener('playing', () => onVideoFrame(0, { presentationTime: performance.now() }));
}

// --------------------------------------------------------------------------------------------
// The data channel (docs/PROTOCOL.md, "Data channel"): requests with an id, replies matched by it.

function openChannel(session, dc) {
  let nextId = 1;
  const pending = new Map(); // id -> { resolve, reject, header, parts, got }
  const channel = {
    open: false,
    request(type, fields = {}) {
      if (!channel.open) return Promise.reject(new Error('the data channel is not open'));
      const id = nextId++;
      dc.send(JSON.stringify({ id, type, ...fields }));
      return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
    },
    close() {
      channel.open = false;
      for (const p of pending.values()) p.reject(new Error('the data channel closed'));
      pending.clear();
      dc.close();
    },
  };
  dc.onopen = () => {
    if (view.session !== session) return;
    channel.open = true;
    $('snapshot-button').disabled = false;
    $('picture-button').disabled = false;
    followDeviceStats();
  };
  dc.onclose = () => {
    channel.open = false;
    if (view.session === session) {
      $('snapshot-button').disabled = true;
      $('picture-button').disabled = true;
    }
  };
  dc.onmessage = (event) => {
    let m;
    try {
      m = JSON.parse(event.data);
    } catch {
      return;
    }
    if (m.type === 'stats' && m.id === undefined) {
      if (view.session === session) view.deviceStats = m;
      return;
    }
    const p = pending.get(m.id);
    if (!p) return;
    if (m.type === 'error') {
      pending.delete(m.id);
      p.reject(new Error(`${m.message} (${m.code})`));
    } else if (m.type === 'snapshot') {
      p.header = m;
      p.parts = new Array(m.chunks);
      p.got = 0;
      if (m.chunks === 0) finishSnapshot(m.id, p);
    } else if (m.type === 'snapshot-chunk' && p.header) {
      if (p.parts[m.index] === undefined) p.got += 1;
      p.parts[m.index] = Uint8Array.from(atob(m.data), (c) => c.charCodeAt(0));
      if (p.got === p.header.chunks) finishSnapshot(m.id, p);
    } else {
      pending.delete(m.id);
      p.resolve(m);
    }
  };
  function finishSnapshot(id, p) {
    pending.delete(id);
    const bytes = new Uint8Array(p.header.size);
    let at = 0;
    for (const part of p.parts) {
      if (at + part.length > bytes.length) break;
      bytes.set(part, at);
      at += part.length;
    }
    const crc = crc32(bytes).toString(16).padStart(8, '0');
    if (at !== p.header.size || crc !== p.header.crc32) {
      p.reject(new Error(`the snapshot arrived damaged (${at} of ${p.header.size} bytes, CRC-32 ${crc})`));
    } else {
      p.resolve({ ...p.header, bytes });
    }
  }
  return channel;
}

let crcTable = null;
function crc32(bytes) {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (const b of bytes) crc = crcTable[(crc ^ b) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function request(type, fields) {
  const channel = view.session && view.session.channel;
  if (!channel) return Promise.reject(new Error('not watching a camera'));
  return channel.request(type, fields);
}

/** Snapshot button: the camera's current frame as a JPEG download. */
async function takeSnapshot() {
  const button = $('snapshot-button');
  button.disabled = true;
  try {
    const snap = await request('snapshot', { quality: 90 });
    view.lastSnapshot = { width: snap.width, height: snap.height, size: snap.size, crc32: snap.crc32 };
    const url = URL.createObjectURL(new Blob([snap.bytes], { type: 'image/jpeg' }));
    const a = document.createElement('a');
    const stamp = new Date(snap.captured_ms).toISOString().replace(/[:.]/g, '-');
    a.href = url;
    a.download = `${(view.deviceId || 'camera').replace(/\//g, '-')}-${stamp}.jpg`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    $('control-note').textContent = `Snapshot failed: ${err.message}`;
    console.warn(`spyglass: snapshot failed: ${err.message}`);
  } finally {
    button.disabled = !(view.session && view.session.channel && view.session.channel.open);
  }
}

/** Picture panel: the camera's controls as sliders and switches. */
async function showControls(open) {
  $('picture-panel').hidden = !open;
  $('picture-button').setAttribute('aria-expanded', String(open));
  if (!open) return;
  const list = $('control-list');
  try {
    const reply = await request('controls');
    view.controls = reply.controls;
    list.replaceChildren(...reply.controls.map(controlInput));
    if (!reply.controls.length) list.textContent = 'This camera has no controls.';
  } catch (err) {
    list.textContent = `Controls unavailable: ${err.message}`;
  }
}

function controlInput(control) {
  const label = document.createElement('label');
  const name = document.createElement('span');
  const value = document.createElement('output');
  const input = document.createElement(control.type === 'menu' ? 'select' : 'input');
  input.name = control.name;
  input.dataset.control = control.name;
  if (control.type === 'menu') {
    for (const [v, text] of control.menu || []) input.append(new Option(text, v, false, v === control.value));
  } else if (control.type === 'boolean') {
    input.type = 'checkbox';
    input.checked = control.value !== 0;
  } else {
    Object.assign(input, { type: 'range', min: control.min, max: control.max, step: control.step || 1 });
    input.value = control.value;
  }
  name.textContent = control.name.replace(/_/g, ' ');
  value.textContent = ` ${control.value}`;
  input.addEventListener('change', async () => {
    const wanted = input.type === 'checkbox' ? Number(input.checked) : Number(input.value);
    try {
      const reply = await request('set-control', { name: control.name, value: wanted });
      value.textContent = ` ${reply.control.value}`;
      $('control-note').textContent = 'Changes apply to the camera\'s one stream: every viewer sees them.';
    } catch (err) {
      $('control-note').textContent = `${control.name}: ${err.message}`;
    }
  });
  label.append(name, value, input);
  return label;
}

// --------------------------------------------------------------------------------------------
// Stats overlay

let previous = null;

function median(values) {
  if (!values.length) return null;
  const v = [...values].sort((a, b) => a - b);
  return v[Math.floor(v.length / 2)];
}

async function updateStats() {
  const pc = view.pc;
  if (!statsVisible) return;
  const lines = [];
  lines.push(`camera   ${view.deviceId ?? '—'}`);
  if (pc) {
    const report = await pc.getStats();
    let inbound = null;
    let pair = null;
    let codec = null;
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') inbound = s;
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
    });
    if (inbound && inbound.codecId) codec = report.get(inbound.codecId);
    if (inbound) {
      const now = inbound.timestamp;
      let kbps = null;
      let fps = inbound.framesPerSecond ?? null;
      if (previous && previous.id === inbound.id && now > previous.timestamp) {
        const seconds = (now - previous.timestamp) / 1000;
        kbps = (8 * (inbound.bytesReceived - previous.bytesReceived)) / 1000 / seconds;
        fps = (inbound.framesDecoded - previous.framesDecoded) / seconds;
      }
      previous = inbound;
      const size = inbound.frameWidth ? `${inbound.frameWidth}x${inbound.frameHeight}` : '—';
      lines.push(`video    ${size} ${codec ? codec.mimeType.replace('video/', '') : ''}`);
      lines.push(`fps      ${fps == null ? '—' : fps.toFixed(1)}`);
      lines.push(`bitrate  ${kbps == null ? '—' : kbps >= 1000 ? `${(kbps / 1000).toFixed(2)} Mbit/s` : `${kbps.toFixed(0)} kbit/s`}`);
      lines.push(`lost     ${inbound.packetsLost ?? 0} packets`);
      lines.push(`frames   ${inbound.framesDecoded ?? 0} decoded, ${inbound.framesDropped ?? 0} dropped`);
      lines.push(`freezes  ${inbound.freezeCount ?? 0} (${(inbound.totalFreezesDuration ?? 0).toFixed(1)} s)`);
    }
    const d = view.deviceStats;
    if (d && d.estimate_kbps != null) {
      // What the device knows about this viewer's link, and what it sends it.
      lines.push(`link     estimate ${d.estimate_kbps} kbit/s, loss ${d.loss_percent} %, ${d.retransmitted_packets} resent`);
      const all = d.layer + 1 === d.layers;
      lines.push(`layers   receiving ${d.layer + 1} of ${d.layers}${all ? '' : ' (fewer frames: the link is narrow)'}`);
      lines.push(`encoder  ${d.target_kbps} kbit/s shared target${d.stalls ? `, ${d.stalls} stalls` : ''}`);
    }
    const rtt = pair && pair.currentRoundTripTime;
    lines.push(`rtt      ${rtt == null ? '—' : `${(rtt * 1000).toFixed(1)} ms`}`);
  }
  const code = view.lastCode;
  const lat = median(view.metrics.latencyMs.slice(-30));
  lines.push(code ? `latency  ${lat} ms glass-to-glass (frame ${code.frame})` : 'latency  — (no test pattern)');
  const first = view.metrics.firstFrameMs.at(-1);
  if (first != null) lines.push(`start    ${first} ms from offer to first frame`);
  $('stats').textContent = lines.join('\n');
}

function showStats(on) {
  statsVisible = on;
  $('stats').hidden = !on;
  $('stats-button').setAttribute('aria-pressed', String(on));
  if (!on) view.lastCode = null;
  followDeviceStats();
  updateStats();
}

/** Subscribe to the device's stats pushes while the overlay is open, unsubscribe when not. */
function followDeviceStats() {
  const channel = view.session && view.session.channel;
  if (!channel || !channel.open) return;
  const request = statsVisible ? channel.request('subscribe-stats', { interval_ms: 1000 }) : channel.request('unsubscribe-stats');
  request.catch(() => {});
}

setInterval(updateStats, 1000);

// --------------------------------------------------------------------------------------------
// Controls

function openPanel(open) {
  $('panel').hidden = !open;
  $('devices-button').setAttribute('aria-expanded', String(open));
}

$('devices-button').addEventListener('click', () => openPanel($('panel').hidden));
$('stats-button').addEventListener('click', () => showStats(!statsVisible));
$('snapshot-button').addEventListener('click', takeSnapshot);
$('picture-button').addEventListener('click', () => showControls($('picture-panel').hidden));
$('unmute-button').addEventListener('click', () => {
  video.muted = !video.muted;
  $('unmute-button').textContent = video.muted ? 'Unmute' : 'Mute';
  if (!video.muted) video.play().catch(() => {});
});
$('fullscreen-button').addEventListener('click', () => {
  if (document.fullscreenElement) document.exitFullscreen();
  else if (document.documentElement.requestFullscreen) document.documentElement.requestFullscreen();
  else if (video.webkitEnterFullscreen) video.webkitEnterFullscreen(); // iPhone Safari
});
document.addEventListener('keydown', (event) => {
  if (event.target instanceof HTMLInputElement) return;
  if (event.key === 's') showStats(!statsVisible);
  if (event.key === 'f') $('fullscreen-button').click();
});
$('broker-form').addEventListener('submit', (event) => {
  event.preventDefault();
  credentials = { username: $('broker-username').value, password: $('broker-password').value };
  endSession();
  connect($('broker-url').value.trim());
});

// --------------------------------------------------------------------------------------------
// Start

const config = await loadConfig();
view.deviceId = config.id;
staticIceServers = config.iceServers;
credentials.username = config.username;
$('broker-username').value = config.username;
showStats(params.get('stats') === '1');
renderDevices();
if (config.broker) {
  connect(config.broker);
} else {
  setState('error', 'No broker is configured: open this page with ?broker=ws://HOST:PORT');
  openPanel(true);
  $('broker-settings').open = true;
}
