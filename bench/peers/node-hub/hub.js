// The baseline many teams would write themselves: a Node.js hub on the `ws` package.
//   ws://HOST:PORT/echo  echoes every message (text stays text, binary stays binary)
//   ws://HOST:PORT/sub   subscribes the connection to the one channel
//   POST /publish        sends the request body to every subscriber; answers {"reached": N}
// Usage: node hub.js PORT
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 18090);
const subscribers = new Set();
const options = { noServer: true, perMessageDeflate: false, clientTracking: false };
const echo = new WebSocketServer(options);
const sub = new WebSocketServer(options);

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/publish') {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":"not found"}');
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString();
    let reached = 0;
    for (const ws of subscribers) {
      if (ws.readyState === 1) {
        ws.send(body);
        reached += 1;
      }
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ reached }));
  });
});

server.on('upgrade', (req, socket, head) => {
  if (req.url === '/echo') {
    echo.handleUpgrade(req, socket, head, (ws) => {
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    });
  } else if (req.url === '/sub') {
    sub.handleUpgrade(req, socket, head, (ws) => {
      subscribers.add(ws);
      ws.on('close', () => subscribers.delete(ws));
    });
  } else {
    socket.destroy();
  }
});

server.listen(port, '127.0.0.1', () => console.log(`node hub listening on ${port}`));
