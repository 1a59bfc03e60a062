// An OPC UA server that is not asyncua's: node-opcua (installed by `make tools` into
// tests/tools/node_modules). It serves pump1.counter (Double, namespace urn:tagway:node-test),
// counting up by one every 200 ms, and pump1.label, on a port chosen at run time.
// Usage: node opcua_node_server.js PKI_DIR
// Prints one JSON line {"port": N} on stdout once it listens; stops on SIGTERM or stdin EOF.
"use strict";
const path = require("path");
const modules = path.join(__dirname, "node_modules");
const need = (name) => require(path.join(modules, name));
const { OPCUAServer } = need("node-opcua-server");
const { Variant, DataType } = need("node-opcua-variant");
const { OPCUACertificateManager } = need("node-opcua-certificate-manager");
const { nodesets } = need("node-opcua-nodesets");

async function main() {
  const pki = process.argv[2];
  const serverCertificateManager = new OPCUACertificateManager({
    automaticallyAcceptUnknownCertificate: process.env.TRUST_CLIENTS !== "0",
    rootFolder: path.join(pki, "server"),
  });
  const server = new OPCUAServer({
    port: 0,
    resourcePath: "/tagway-node",
    allowAnonymous: true,
    nodeset_filename: [nodesets.standard],
    serverCertificateManager,
    buildInfo: { productName: "tagway-node-opcua-test" },
  });
  await server.initialize();
  const addressSpace = server.engine.addressSpace;
  const ns = addressSpace.registerNamespace("urn:tagway:node-test");
  const pump = ns.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: "pump1" });
  const counter = ns.addVariable({
    componentOf: pump,
    browseName: "counter",
    nodeId: "s=pump1.counter",
    dataType: "Double",
    minimumSamplingInterval: 50,
  });
  ns.addVariable({
    componentOf: pump,
    browseName: "label",
    nodeId: "s=pump1.label",
    dataType: "String",
    value: { dataType: DataType.String, value: "P-101" },
  });
  let count = 0;
  counter.setValueFromSource(new Variant({ dataType: DataType.Double, value: count }));
  setInterval(() => {
    count += 1;
    counter.setValueFromSource(new Variant({ dataType: DataType.Double, value: count }));
  }, 200);
  await server.start();
  const port = server.endpoints[0].port || server.endpoints[0]._server.address().port;
  process.stdout.write(JSON.stringify({ port }) + "\n");
  const stop = async () => {
    await server.shutdown(0);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.stdin.on("end", stop);
  process.stdin.resume();
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + "\n");
  process.exit(1);
});
