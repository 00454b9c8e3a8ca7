#!/usr/bin/env node
// A short, readable demo of the server with the official realtime-js client:
// two clients (one speaking protocol vsn 1.0.0, one vsn 2.0.0) join the same room,
// track presence, exchange broadcasts and receive a REST broadcast.
//
//   node interop/demo.mjs [ws://127.0.0.1:54321/realtime/v1] [anon key]
//
// Exits 0 when every step was observed, 1 otherwise.

import WebSocket from 'ws';
import { RealtimeClient } from '@supabase/realtime-js';

const ANON_KEY =
  'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0';
const endpoint = process.argv[2] || 'ws://127.0.0.1:54321/realtime/v1';
const apikey = process.argv[3] || ANON_KEY;
const room = process.env.DEMO_ROOM || 'room1';
const httpBase = endpoint.replace(/^ws/, 'http');

const started = Date.now();
const stamp = () => `+${String(Date.now() - started).padStart(5)} ms`;
const say = (who, text) => console.log(`${stamp()}  [${who.padEnd(8)}] ${text}`);

function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

function waiter() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

function makeClient(name, vsn, presenceKey) {
  const client = new RealtimeClient(endpoint, { transport: WebSocket, params: { apikey }, vsn });
  const channel = client.channel(room, {
    config: { broadcast: { self: false, ack: true }, presence: { key: presenceKey } },
  });
  const seen = { broadcasts: [], presenceKeys: new Set() };
  const gotBroadcast = new Map();
  const expect = (event) => {
    if (!gotBroadcast.has(event)) gotBroadcast.set(event, waiter());
    return gotBroadcast.get(event).promise;
  };
  channel.on('broadcast', { event: '*' }, (msg) => {
    seen.broadcasts.push(msg);
    say(name, `received broadcast "${msg.event}": ${JSON.stringify(msg.payload)}`);
    if (!gotBroadcast.has(msg.event)) gotBroadcast.set(msg.event, waiter());
    gotBroadcast.get(msg.event).resolve(msg);
  });
  const presenceWaiters = [];
  channel.on('presence', { event: 'sync' }, () => {
    const state = channel.presenceState();
    const summary = Object.entries(state)
      .map(([k, metas]) => `${k}(${metas.map((m) => m.status).join(',')})`)
      .join(' ');
    say(name, `presence sync: ${summary || '(nobody)'}`);
    for (const w of presenceWaiters) w(state);
  });
  channel.on('presence', { event: 'join' }, ({ key }) => say(name, `presence join: ${key}`));
  channel.on('presence', { event: 'leave' }, ({ key }) => say(name, `presence leave: ${key}`));
  const untilPresence = (pred) =>
    new Promise((resolve) => {
      if (pred(channel.presenceState())) return resolve();
      presenceWaiters.push((s) => pred(s) && resolve());
    });
  const subscribed = new Promise((resolve, reject) => {
    channel.subscribe((status, err) => {
      say(name, `subscribe status: ${status}${err ? ` (${err.message})` : ''}`);
      if (status === 'SUBSCRIBED') resolve();
      else if (status !== 'CLOSED') reject(err || new Error(status));
    });
  });
  return { name, client, channel, seen, expect, untilPresence, subscribed };
}

async function main() {
  console.log(`Realtime demo against ${endpoint} (room "${room}")`);
  const alice = makeClient('alice', '1.0.0', 'alice');
  const bob = makeClient('bob', '2.0.0', 'bob');
  say('alice', `connecting with realtime-js, protocol vsn ${alice.client.vsn}`);
  say('bob', `connecting with realtime-js, protocol vsn ${bob.client.vsn}`);
  await withTimeout(Promise.all([alice.subscribed, bob.subscribed]), 15000, 'both clients to subscribe');

  say('alice', 'track presence {status: "online"}');
  say('alice', `track -> ${await alice.channel.track({ status: 'online' })}`);
  say('bob', 'track presence {status: "busy"}');
  say('bob', `track -> ${await bob.channel.track({ status: 'busy' })}`);
  const both = (s) => 'alice' in s && 'bob' in s;
  await withTimeout(Promise.all([alice.untilPresence(both), bob.untilPresence(both)]), 10000, 'presence sync');

  const hello = bob.expect('hello');
  const sent1 = await alice.channel.send({ type: 'broadcast', event: 'hello', payload: { text: 'hi bob!' } });
  say('alice', `sent broadcast "hello" (ack: ${sent1})`);
  await withTimeout(hello, 10000, 'bob to receive "hello"');

  const reply = alice.expect('reply');
  const sent2 = await bob.channel.send({ type: 'broadcast', event: 'reply', payload: { text: 'hi alice, from v2!' } });
  say('bob', `sent broadcast "reply" (ack: ${sent2})`);
  await withTimeout(reply, 10000, 'alice to receive "reply"');

  const restA = alice.expect('from-rest');
  const restB = bob.expect('from-rest');
  const res = await fetch(`${httpBase}/api/broadcast`, {
    method: 'POST',
    headers: { apikey, 'Content-Type': 'application/json' },
    body: JSON.stringify({ messages: [{ topic: room, event: 'from-rest', payload: { text: 'hello from REST' } }] }),
  });
  say('rest', `POST ${httpBase}/api/broadcast -> HTTP ${res.status}`);
  await withTimeout(Promise.all([restA, restB]), 10000, 'both clients to receive the REST broadcast');

  const curlEvent = process.env.DEMO_CURL_EVENT;
  if (curlEvent) {
    // scripts/run.sh sends this one with curl once it sees the line below.
    const curlA = alice.expect(curlEvent);
    const curlB = bob.expect(curlEvent);
    say('demo', `waiting for a curl broadcast "${curlEvent}" on ${room} ...`);
    await withTimeout(Promise.all([curlA, curlB]), 20000, `both clients to receive the curl broadcast`);
  }

  say('bob', `untrack -> ${await bob.channel.untrack()}`);
  await withTimeout(alice.untilPresence((s) => !('bob' in s)), 10000, 'alice to see bob leave');

  say('alice', `leave room -> ${await alice.client.removeChannel(alice.channel)}`);
  say('bob', `leave room -> ${await bob.client.removeChannel(bob.channel)}`);
  await alice.client.disconnect();
  await bob.client.disconnect();
  console.log(
    `${stamp()}  demo OK: presence, broadcast both ways (v1 <-> v2) and REST broadcast${curlEvent ? 's' : ''} all observed`,
  );
}

main().then(
  () => process.exit(0),
  (err) => {
    console.log(`${stamp()}  demo FAILED: ${err && err.message}`);
    process.exit(1);
  },
);
