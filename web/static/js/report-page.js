// The report page and the "open a file" page: decrypt a sealed report in this browser.
//
// Flow: sealed bytes (from /v1/inbox/<id>/file, or a dropped file) → openSealedFile → POST header and
// wrapped key to /v1/unwrap (the key server audits the release before it answers) → decryptRNCryptor
// with the data key → readBundle → photos as object URLs, summary, downloads. Plaintext never leaves the
// page; the server only ever sees the header.

import { decryptRNCryptor } from "./rncryptor.js";
import { openSealedFile, readBundle } from "./sealed.js";

const root = /** @type {HTMLElement} */ (document.getElementById("report"));
const statusEl = /** @type {HTMLElement} */ (document.getElementById("status"));
/** @type {string[]} */
const objectUrls = [];

/** @param {string} text @param {"busy"|"done"|"error"} state */
function setStatus(text, state) {
  statusEl.textContent = text;
  statusEl.classList.toggle("error", state === "error");
  root.dataset.state = state;
}

/** @param {string} text */
function b64urlToBytes(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

/** @param {Record<string, any>} header @param {string} wrappedKey */
async function unwrapKey(header, wrappedKey) {
  const response = await fetch(root.dataset.unwrapUrl || "/v1/unwrap", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": root.dataset.csrf || "" },
    body: JSON.stringify({ header, wrapped_key: wrappedKey }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || `the key server refused (${response.status})`);
  return b64urlToBytes(body.data_key);
}

/** @param {Uint8Array} bytes @param {string} type */
function blobUrl(bytes, type) {
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  objectUrls.push(url);
  return url;
}

/** @param {string} label @param {string} url @param {string} filename */
function link(label, url, filename) {
  const a = document.createElement("a");
  a.textContent = label;
  a.href = url;
  if (filename) a.download = filename;
  else a.target = "_blank";
  return a;
}

/** @param {HTMLElement} dl @param {string} term @param {unknown} value */
function addTerm(dl, term, value) {
  if (value === undefined || value === null || value === "") return;
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = String(value);
  dl.append(dt, dd);
}

/** @param {import("./sealed.js").Bundle} bundle @param {Uint8Array} zip @param {string} reportId */
function render(bundle, zip, reportId) {
  const report = bundle.report;
  const summary = /** @type {HTMLElement} */ (document.getElementById("summary"));
  summary.replaceChildren();
  addTerm(summary, "Patient", report.patient?.name);
  addTerm(summary, "Identifier", report.patient?.mrn);
  addTerm(summary, "Birth date", report.patient?.birth_date);
  addTerm(summary, "Consent", `${report.consent?.method ?? "?"} (${report.consent?.consenter ?? "?"})`);
  const purposes = Object.entries(report.consent?.purposes ?? {})
    .map(([purpose, yes]) => `${purpose.replace(/_/g, " ")}: ${yes ? "yes" : "no"}`)
    .join(", ");
  addTerm(summary, "Purposes", purposes);
  addTerm(summary, "Created", report.created_at);

  const photos = /** @type {HTMLElement} */ (document.getElementById("photos"));
  photos.replaceChildren();
  for (const photo of bundle.photos) {
    const listed = (report.photos ?? []).find((/** @type {any} */ p) => p.file === photo.file) ?? {};
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = blobUrl(photo.bytes, "image/jpeg");
    img.alt = listed.body_site?.display ?? photo.file;
    // The SHA-256 of the decrypted bytes, computed here with WebCrypto; tests compare it to the original.
    img.dataset.sha256 = photo.sha256hex;
    img.dataset.file = photo.file;
    const caption = document.createElement("figcaption");
    const site = listed.body_site ? `${listed.body_site.display} · ` : "";
    const check = listed.sha256 === photo.sha256hex ? "checksum ok" : "CHECKSUM MISMATCH";
    caption.textContent = `${site}${listed.notes ?? ""} (${check})`;
    figure.append(img, caption, link("Download", img.src, photo.file.replace("photos/", "")));
    photos.append(figure);
  }
  if (bundle.signature) {
    const sig = document.createElement("img");
    sig.src = blobUrl(bundle.signature, "image/png");
    sig.alt = "consent signature";
    photos.append(sig);
  }

  const downloads = /** @type {HTMLElement} */ (document.getElementById("downloads"));
  const pdfUrl = blobUrl(bundle.pdf, "application/pdf");
  downloads.replaceChildren(
    link("Open PDF", pdfUrl, ""),
    link("Download PDF", pdfUrl, `report-${reportId}.pdf`),
    link("Download report (zip)", blobUrl(zip, "application/zip"), `report-${reportId}.zip`),
    link("report.xml", blobUrl(new TextEncoder().encode(bundle.xml), "application/xml"), `report-${reportId}.xml`),
  );
  /** @type {HTMLElement} */ (document.getElementById("content")).hidden = false;
}

/** @param {Uint8Array} bytes */
async function openBytes(bytes) {
  setStatus("Checking the sealed file…", "busy");
  const sealed = await openSealedFile(bytes);
  if (!sealed.wrappedKey) throw new Error("this report is sealed with a passphrase; open it with the kiosk tool");
  setStatus("Asking the key server for the key…", "busy");
  const dataKey = await unwrapKey(sealed.header, sealed.wrappedKey);
  setStatus("Decrypting…", "busy");
  const zip = await decryptRNCryptor(sealed.payload, { dataKey });
  dataKey.fill(0);
  const bundle = await readBundle(zip);
  render(bundle, zip, sealed.header.report_id);
  setStatus(`Opened ${bundle.photos.length} photo(s). Close this tab when done.`, "done");
}

/** @param {unknown} err */
function fail(err) {
  setStatus(err instanceof Error ? err.message : String(err), "error");
}

async function openFromInbox() {
  setStatus("Downloading the sealed report…", "busy");
  const response = await fetch(root.dataset.fileUrl || "", { credentials: "same-origin" });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.message || `download failed (${response.status})`);
  }
  await openBytes(new Uint8Array(await response.arrayBuffer()));
}

function setUpDropzone() {
  const zone = /** @type {HTMLElement} */ (document.getElementById("dropzone"));
  const input = /** @type {HTMLInputElement} */ (document.getElementById("file-input"));
  /** @param {File | undefined} file */
  const openFile = (file) => {
    if (!file) return;
    file
      .arrayBuffer()
      .then((buf) => openBytes(new Uint8Array(buf)))
      .catch(fail);
  };
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    openFile(e.dataTransfer?.files[0]);
  });
  input.addEventListener("change", () => openFile(input.files?.[0]));
}

window.addEventListener("pagehide", () => objectUrls.forEach((url) => URL.revokeObjectURL(url)));

if (root.dataset.mode === "file") setUpDropzone();
else openFromInbox().catch(fail);
