'use strict';
// A proxyless gRPC client (@grpc/grpc-js with @grpc/grpc-js-xds) for the end-to-end tests,
// driven over stdin like tests/e2e/xds_grpc.py, so one channel lives through mesh changes:
//
//     node xds_client.js PILOT NODE_ID TARGET
//
// Each line read is a command, each answer one JSON line:
//     calls N [HEADER=VALUE]   N calls of /e2e.Greeter/Hello: {"servers": {NAME: count}, "errors": {CODE: count}}

const readline = require('readline');

const [pilot, nodeId, target] = process.argv.slice(2);
process.env.GRPC_XDS_BOOTSTRAP_CONFIG = JSON.stringify({
  xds_servers: [{ server_uri: pilot, channel_creds: [{ type: 'insecure' }], server_features: ['xds_v3'] }],
  node: { id: nodeId, locality: { zone: 'test' } },
});

const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const client = new grpc.Client(`xds:///${target}`, grpc.credentials.createInsecure());
const identity = (it) => it;

function hello(header) {
  const metadata = new grpc.Metadata();
  if (header) {
    const at = header.indexOf('=');
    metadata.set(header.slice(0, at), header.slice(at + 1));
  }
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + 10000);
    client.makeUnaryRequest('/e2e.Greeter/Hello', identity, identity, Buffer.from('mesh'), metadata, { deadline }, (err, reply) => {
      resolve(err ? { error: `${grpc.status[err.code]}: ${err.details}` } : { reply: reply.toString() });
    });
  });
}

async function calls(count, header) {
  const servers = {};
  const errors = {};
  for (let i = 0; i < count; i++) {
    const answer = await hello(header);
    if (answer.error) {
      errors[answer.error] = (errors[answer.error] || 0) + 1;
    } else {
      const name = answer.reply.includes(' from ') ? answer.reply.split(' from ').pop() : answer.reply;
      servers[name] = (servers[name] || 0) + 1;
    }
  }
  return { servers, errors };
}

async function main() {
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const words = line.trim().split(/\s+/);
    let out;
    if (words[0] === 'calls') {
      out = await calls(Number(words[1]), words[2]);
    } else {
      out = { error: `unknown command ${words[0]}` };
    }
    process.stdout.write(JSON.stringify(out) + '\n');
  }
  client.close();
  process.exit(0);
}

main();
