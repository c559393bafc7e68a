// Builds the demo page into dist/: the wire schema is read from proto/pubsub.proto (the one
// source of it) with protobufjs, and bundled with the page's code by esbuild. `npm run build`.
import * as esbuild from "esbuild";
import protobuf from "protobufjs";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const proto = join(here, "../../proto/pubsub.proto");
const gen = join(here, "gen");
const dist = join(here, "dist");
mkdirSync(gen, { recursive: true });
mkdirSync(dist, { recursive: true });

const schema = protobuf.loadSync(proto).toJSON();
writeFileSync(join(gen, "pubsub.json"), JSON.stringify(schema));

await esbuild.build({
  entryPoints: [join(here, "src/app.js")],
  bundle: true,
  minify: true,
  sourcemap: true,
  format: "esm",
  target: ["es2020"],
  outfile: join(dist, "app.js"),
  logLevel: "warning",
});
for (const file of ["index.html", "events.html", "style.css"]) {
  copyFileSync(join(here, "src", file), join(dist, file));
}
console.log(`demo page built into ${dist}`);
