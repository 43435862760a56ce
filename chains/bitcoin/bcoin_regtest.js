// Starts a bcoin full node on regtest with Bitcoin Core's address prefixes.
//
// bcoin's own regtest prefixes (bech32 "rb", p2pkh 0x3c) differ from Bitcoin
// Core's, so addresses made for Core's regtest would not parse. We set Core's
// prefixes on the network object before the node is created.
//
// Usage: node bcoin_regtest.js --port P --api-key K [--prefix DIR]
//   --prefix DIR keeps the chain in DIR (LevelDB) so a restart keeps it;
//   without it the chain lives in memory.
'use strict';

const fs = require('fs');
const path = require('path');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const modules = arg('--node-modules', path.join(process.cwd(), 'node_modules'));
const bcoin = require(path.join(modules, 'bcoin'));

const network = bcoin.Network.get('regtest');
network.addressPrefix.pubkeyhash = 0x6f;
network.addressPrefix.scripthash = 0xc4;
network.addressPrefix.bech32 = 'bcrt';
network.keyPrefix.privkey = 0xef;

// Off the peer-to-peer network. bcoin dialled regtest's seed 127.0.0.1:48444 every few
// seconds, and now and then the kernel gave that socket the source port 48444: a TCP
// self-connect, which bcoin accepts on regtest. The node was then its own peer and handed
// itself back transactions an invalidateblock had just wiped from its mempool. So: no
// seeds, no host list kept from an older run, and a self-connect refused all the same.
// (node.connect() stays: without it the chain's reset handlers fail, mempool included.)
network.selfConnect = false;

const port = Number(arg('--port', '18443'));
const apiKey = arg('--api-key', '');
const prefix = arg('--prefix', null);

const node = new bcoin.FullNode({
  network: 'regtest',
  memory: prefix === null,
  prefix: prefix || undefined,
  httpPort: port,
  httpHost: '127.0.0.1',
  apiKey,
  listen: false,
  seeds: [],
  logLevel: process.env.CUSTODY_BCOIN_LOG_LEVEL || 'warning',
  logConsole: true,
  // Our tests and the scanner read raw blocks; no indexes are needed.
  indexTX: false,
  indexAddress: false
});

async function main() {
  if (prefix !== null) {
    fs.mkdirSync(path.join(prefix, 'regtest'), { recursive: true });
    fs.rmSync(path.join(prefix, 'regtest', 'hosts.json'), { force: true });
  }
  await node.open();
  await node.connect();
  console.log(JSON.stringify({ event: 'ready', port, height: node.chain.height }));
}

async function stop() {
  try {
    await node.close();
  } finally {
    process.exit(0);
  }
}

process.on('SIGTERM', stop);
process.on('SIGINT', stop);
main().catch((err) => {
  console.error(err.stack || String(err));
  process.exit(1);
});
