// Dubbo peers for the end-to-end tests (not our code): providers on sofa-rpc-node with the
// dubbo-remoting codec, and callers on dubbo2.js.
//
//   node dubbo_peer.js server NAME PORT SERVICE...   serves each `interface:version` SERVICE
//                                                   on PORT; prints `serving PORT` when ready
//   node dubbo_peer.js client ADDR CALLS             makes the calls of the JSON array CALLS
//                                                   ([{interface, version, group, method, args}])
//                                                   at ADDR with dubbo2.js's DirectlyDubbo;
//                                                   prints a JSON array of {ok, result} or
//                                                   {ok, error}
'use strict';

const { RpcServer } = require('sofa-rpc-node').server;
const { DirectlyDubbo, java } = require('dubbo2.js');

const quiet = { info() {}, warn() {}, debug() {}, error(...args) { console.error(...args); } };

async function server(name, port, services) {
  const server = new RpcServer({ logger: quiet, port: Number(port), registry: null, protocol: require('dubbo-remoting') });
  for (const service of services) {
    const [interfaceName, version] = service.split(':');
    const answer = method => async (...args) => `${name} ${method}(${args.join(',')})`;
    server.addService({ interfaceName, version }, {
      greet: answer('greet'),
      greetAsync: answer('greetAsync'),
      async sleep(ms) {
        await new Promise(resolve => setTimeout(resolve, Number(ms)));
        return `${name} slept ${ms}`;
      },
    });
  }
  await server.start();
  console.log(`serving ${port}`);
}

async function client(address, calls) {
  const dubbo = new DirectlyDubbo({ dubboAddress: address, dubboVersion: '2.0.2', dubboInvokeTimeout: 10 });
  const results = [];
  for (const call of JSON.parse(calls)) {
    const service = dubbo.proxyService({
      dubboInterface: call.interface,
      version: call.version,
      group: call.group,
      timeout: call.timeout || 3,
      methods: { [call.method]: (...args) => args.map(it => java.String(String(it))) },
    });
    const { err, res } = await service[call.method](...(call.args || []));
    results.push(err ? { ok: false, error: String(err.message || err) } : { ok: true, result: res });
  }
  console.log(JSON.stringify(results));
  process.exit(0);
}

const [mode, ...rest] = process.argv.slice(2);
const run = { server: () => server(rest[0], rest[1], rest.slice(2)), client: () => client(...rest) }[mode];
if (!run) {
  console.error('usage: dubbo_peer.js server NAME PORT SERVICE... | client ADDR CALLS');
  process.exit(2);
}
run().catch(err => { console.error(err); process.exit(1); });
