// Bolt peers for the end-to-end tests, on sofa-rpc-node and sofa-bolt-node (not our code).
//
//   node sofa_peer.js server NAME PORT SERVICE...   serves each `interface:version` SERVICE on
//                                                  PORT; prints `serving PORT` when ready
//   node sofa_peer.js client ADDR FLAVOUR CALLS     makes the calls of the JSON array CALLS
//                                                  ([{service, method, args, timeout}]) at ADDR,
//                                                  over Bolt `v1` or `v2crc`; prints one JSON
//                                                  array of {ok, result} or {ok, error}
//   node sofa_peer.js heartbeat ADDR FLAVOUR        sends a heartbeat and prints the decoded ack
//   node sofa_peer.js raw ADDR FLAVOUR SERVICE METHOD ARGS TIMEOUT
//                                                  sends one request encoded by sofa-bolt-node
//                                                  and prints the response's status, id and
//                                                  flavour, read from its head (sofa-rpc-node
//                                                  reports every failure without a body alike)
//   node sofa_peer.js flood ADDR FLAVOUR SERVICE METHOD ARGS COUNT
//                                                  sends COUNT requests encoded by sofa-bolt-node
//                                                  and never reads an answer; prints `sent` once
//                                                  they are written or queued, and stays until
//                                                  killed
'use strict';

const net = require('net');
const bolt = require('sofa-bolt-node');
const { RpcServer } = require('sofa-rpc-node').server;
const { RpcClient } = require('sofa-rpc-node').client;

const quiet = { info() {}, warn() {}, debug() {}, error(...args) { console.error(...args); } };

// sofa-bolt-node's encoder speaks Bolt v1 unless told otherwise; `v2crc` is Bolt v2 with the
// CRC32 trailer (protocol 2, version 2, switch bit 0).
function flavoured(flavour) {
  if (flavour === 'v1') return bolt;
  return Object.assign(Object.create(bolt), {
    encoder(options) {
      const encoder = bolt.encoder(options);
      encoder.protocolType = 'bolt2';
      encoder.boltVersion = 2;
      encoder.crcEnable = true;
      return encoder;
    },
  });
}

async function server(name, port, services) {
  const server = new RpcServer({ logger: quiet, port: Number(port), registry: null });
  for (const service of services) {
    const [interfaceName, version] = service.split(':');
    const answer = method => async (...args) => `${name} ${interfaceName}:${version} ${method}(${args.join(',')})`;
    server.addService({ interfaceName, version }, {
      getOrder: answer('getOrder'),
      async getSlowly(ms) {
        await new Promise(resolve => setTimeout(resolve, Number(ms)));
        return `${name} slept ${ms}`;
      },
      createOrder: answer('createOrder'),
      checkStock: answer('checkStock'),
      reserve: answer('reserve'),
      async sleep(ms) {
        await new Promise(resolve => setTimeout(resolve, Number(ms)));
        return `${name} slept ${ms}`;
      },
      async fail(message) {
        throw new Error(message);
      },
    });
  }
  await server.start();
  console.log(`serving ${port}`);
}

async function client(address, flavour, calls) {
  const client = new RpcClient({ logger: quiet, protocol: flavoured(flavour) });
  const results = [];
  for (const call of JSON.parse(calls)) {
    const [interfaceName, version] = call.service.split(':');
    const consumer = client.createConsumer({ interfaceName, version, serverHost: address });
    await consumer.ready();
    try {
      const result = await consumer.invoke(call.method, call.args || [], { responseTimeout: call.timeout || 3000 });
      results.push({ ok: true, result });
    } catch (err) {
      results.push({ ok: false, error: err.name, message: err.message, code: err.resultCode });
    }
  }
  console.log(JSON.stringify(results));
  await client.close();
  process.exit(0);
}

async function heartbeat(address, flavour) {
  const [host, port] = address.split(':');
  const socket = net.connect(Number(port), host);
  const decoder = bolt.decoder({ sentReqs: new Map(), classCache: new Map() });
  decoder.on('heartbeat_ack', packet => {
    console.log(JSON.stringify({ id: packet.packetId, type: packet.packetType, meta: { boltVersion: packet.meta && packet.meta.boltVersion, crcEnable: packet.meta && packet.meta.crcEnable } }));
    socket.end();
    process.exit(0);
  });
  decoder.on('error', err => { console.log(JSON.stringify({ error: err.message })); process.exit(1); });
  socket.pipe(decoder);
  socket.write(require('sofa-bolt-node/lib/protocol').heartbeatEncode(4242, { clientUrl: 'test' }, options(flavour)));
  setTimeout(() => { console.log(JSON.stringify({ error: 'no ack in 3 s' })); process.exit(1); }, 3000);
}

function options(flavour) {
  return flavour === 'v1'
    ? { protocolType: 'bolt', codecType: 'hessian2', boltVersion: 1, crcEnable: false }
    : { protocolType: 'bolt2', codecType: 'hessian2', boltVersion: 2, crcEnable: true };
}

async function raw(address, flavour, service, method, args, timeout) {
  const [host, port] = address.split(':');
  const socket = net.connect(Number(port), host);
  const request = { serverSignature: service, methodName: method, args: JSON.parse(args), timeout: Number(timeout) };
  socket.write(require('sofa-bolt-node/lib/protocol').requestEncode(77, request, options(flavour)));
  let buffer = Buffer.alloc(0);
  const started = Date.now();
  socket.on('data', chunk => {
    buffer = Buffer.concat([buffer, chunk]);
    const v2 = buffer[0] === 2;
    const fixed = v2 ? 22 : 20;
    if (buffer.length < fixed) return;
    const at = v2 ? 14 : 12;
    const length = fixed + buffer.readUInt16BE(at) + buffer.readUInt16BE(at + 2) + buffer.readUInt32BE(at + 4) + (v2 && buffer[1] === 2 && (buffer[11] & 1) ? 4 : 0);
    if (buffer.length < length) return;
    const frame = buffer.subarray(0, length);
    const crc = v2 && buffer[1] === 2 && (buffer[11] & 1) ? frame.readInt32BE(length - 4) === require('sofa-bolt-node/lib/utils').crc32(frame.subarray(0, length - 4)) : null;
    console.log(JSON.stringify({
      protocol: frame[0], id: frame.readUInt32BE(v2 ? 6 : 5), status: frame.readUInt16BE(v2 ? 12 : 10), crc, ms: Date.now() - started,
    }));
    process.exit(0);
  });
  socket.on('close', () => { console.log(JSON.stringify({ closed: true, ms: Date.now() - started })); process.exit(0); });
  socket.on('error', err => { console.log(JSON.stringify({ error: err.message })); process.exit(1); });
}

// A caller that never reads: its answers fill the socket's buffers and then the sidecar's.
async function flood(address, flavour, service, method, args, count) {
  const [host, port] = address.split(':');
  const socket = net.connect(Number(port), host);
  socket.pause();
  socket.on('error', err => { console.log(JSON.stringify({ error: err.message })); process.exit(1); });
  const request = { serverSignature: service, methodName: method, args: JSON.parse(args), timeout: 20000 };
  const encode = require('sofa-bolt-node/lib/protocol').requestEncode;
  socket.on('connect', () => {
    for (let id = 1; id <= Number(count); id++) socket.write(encode(id, request, options(flavour)));
    console.log('sent');
  });
  setInterval(() => {}, 1000);
}

const [mode, ...rest] = process.argv.slice(2);
const run = {
  server: () => server(rest[0], rest[1], rest.slice(2)),
  client: () => client(...rest),
  heartbeat: () => heartbeat(...rest),
  raw: () => raw(...rest),
  flood: () => flood(...rest),
}[mode];
if (!run) {
  console.error('usage: sofa_peer.js server NAME PORT SERVICE... | client ADDR FLAVOUR CALLS | heartbeat ADDR FLAVOUR | raw ADDR FLAVOUR SERVICE METHOD ARGS TIMEOUT | flood ADDR FLAVOUR SERVICE METHOD ARGS COUNT');
  process.exit(2);
}
run().catch(err => { console.error(err); process.exit(1); });
