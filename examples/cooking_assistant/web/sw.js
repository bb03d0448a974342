// Offline: keep the app, the runtime and the web bundle in the Cache API.
// - install: cache the app shell, lib/ (lib/files.json lists it) and every file bundle/manifest.json lists;
// - fetch: the app shell and bundle/manifest.json network-first (updates arrive), everything else cache-first;
//   a new bundle manifest drops the cached bundle files whose sha256 changed, so old and new never mix
//   (the client verifies every file's hash anyway and refuses a mismatch).
const CACHE = "malm-cooking-assistant-v1";
const SHELL = ["./", "index.html", "app.js", "allergens.json", "manifest.webmanifest", "icon.svg"];
const BUNDLE = "bundle/";

async function precache() {
  const cache = await caches.open(CACHE);
  await cache.addAll(SHELL);
  const lib = await (await fetch("lib/files.json")).json();
  await cache.addAll(lib.map((f) => `lib/${f}`));
  const res = await fetch(`${BUNDLE}manifest.json`);
  if (res.ok) {
    const manifest = await res.clone().json();
    await cache.addAll(Object.keys(manifest.files).map((f) => BUNDLE + f));
    await cache.put(`${BUNDLE}manifest.json`, res);
  }
}

self.addEventListener("install", (event) => event.waitUntil(precache().then(() => self.skipWaiting())));
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

async function dropChangedBundleFiles(cache, fresh) {
  const old = await cache.match(`${BUNDLE}manifest.json`);
  if (!old) return;
  const before = (await old.json()).files || {};
  const after = (await fresh.clone().json()).files || {};
  await Promise.all(Object.keys(before)
    .filter((f) => !after[f] || after[f].sha256 !== before[f].sha256)
    .map((f) => cache.delete(new URL(BUNDLE + f, self.registration.scope).href)));
}

async function networkFirst(request) {
  const cache = await caches.open(CACHE);
  try {
    const res = await fetch(request);
    if (res.ok) {
      if (request.url.endsWith(`${BUNDLE}manifest.json`)) await dropChangedBundleFiles(cache, res);
      await cache.put(request, res.clone());
    }
    return res;
  } catch (e) {
    const hit = await cache.match(request, { ignoreSearch: true });
    if (hit) return hit;
    throw e;
  }
}

async function cacheFirst(request) {
  const cache = await caches.open(CACHE);
  const hit = await cache.match(request);
  if (hit) return hit;
  const res = await fetch(request);
  if (res.ok) await cache.put(request, res.clone());
  return res;
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin) return;
  const rel = url.href.slice(self.registration.scope.length);
  const shell = rel === "" || SHELL.includes(rel) || rel === `${BUNDLE}manifest.json`;
  event.respondWith(shell ? networkFirst(event.request) : cacheFirst(event.request));
});
