// The sealed report file (.cpseal) and the bundle inside it, read in the page.
//
// Mirrors kiosk/sealing/sealed_file.py (container) and kiosk/report/bundle.py (bundle). Both are zips:
//   .cpseal: package.json {"header": {...}, "wrapped_key"?: base64url} + package.encrypted (RNCryptor v3)
//   bundle:  report.json report.xml report.pdf photos/photo-NN.jpg [consent/signature.png]
// Checks here give early, clear errors; the RNCryptor HMAC over the payload is what proves integrity.

import { unzipSync } from "../vendor/fflate/browser.js";

const FORMAT = "clinical-photo-kiosk/sealed-report";
const HEADER_ENTRY = "package.json";
const PAYLOAD_ENTRY = "package.encrypted";
const MAX_HEADER_BYTES = 64 * 1024;
const HMAC_SIZE = 32;
const STORED = 0;

const BUNDLE_NAME = /^(report\.(json|xml|pdf)|photos\/photo-\d{2,3}\.jpg|consent\/signature\.png)$/;
const BUNDLE_REQUIRED = ["report.json", "report.xml", "report.pdf"];
const SIGNATURE_ENTRY = "consent/signature.png";
const MAX_ENTRY_BYTES = 512 * 1024 * 1024;

/** Not a sealed report, or damaged, truncated or altered. */
export class SealedFileError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "SealedFileError";
  }
}

/** A decrypted bundle that is not a valid report. */
export class BundleError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "BundleError";
  }
}

/**
 * @typedef {{name: string, size: number, originalSize: number, compression: number}} ZipEntryInfo
 * @typedef {{header: Record<string, any>, wrappedKey: string | null, payload: Uint8Array}} SealedFile
 * @typedef {{file: string, bytes: Uint8Array, sha256hex: string}} Photo
 * @typedef {{report: Record<string, any>, xml: string, pdf: Uint8Array, photos: Photo[],
 *            signature: Uint8Array | null}} Bundle
 */

/**
 * Validate a .cpseal container and return its header and (still encrypted) payload.
 * @param {Uint8Array} bytes the whole file
 * @returns {Promise<SealedFile>}
 */
export async function openSealedFile(bytes) {
  const damaged = "not a sealed report, or the file is damaged";
  const { entries, infos } = unzip(bytes, SealedFileError, damaged, (info) => {
    if (info.name !== HEADER_ENTRY && info.name !== PAYLOAD_ENTRY) {
      return "not a sealed report (unexpected contents)";
    }
    if (info.name === HEADER_ENTRY && info.originalSize > MAX_HEADER_BYTES) {
      return "the report header is too large";
    }
    // The kiosk stores the payload uncompressed; anything else was made by another tool.
    if (info.name === PAYLOAD_ENTRY && info.compression !== STORED) {
      return "the encrypted payload is stored in an unexpected way";
    }
    return null;
  });
  if (!(HEADER_ENTRY in entries) || !(PAYLOAD_ENTRY in entries)) {
    throw new SealedFileError("not a sealed report (unexpected contents)");
  }
  const payloadInfo = /** @type {ZipEntryInfo} */ (infos.find((i) => i.name === PAYLOAD_ENTRY));

  const { header, wrappedKey } = parsePackage(entries[HEADER_ENTRY]);
  const payload = entries[PAYLOAD_ENTRY];
  if (payload.length !== header.payload_size || payloadInfo.size !== header.payload_size) {
    throw new SealedFileError("the encrypted payload has the wrong size (truncated or altered)");
  }
  // payload_hmac is the RNCryptor tag itself, so this catches a payload swapped between reports.
  if (toHex(payload.subarray(payload.length - HMAC_SIZE)) !== header.payload_hmac) {
    throw new SealedFileError("the encrypted payload does not belong to this header (altered)");
  }
  return { header, wrappedKey, payload };
}

/**
 * Read a decrypted bundle strictly: only the known names, each once, photos matching report.json.
 * @param {Uint8Array} zipBytes the RNCryptor plaintext
 * @returns {Promise<Bundle>}
 */
export async function readBundle(zipBytes) {
  const { entries, infos } = unzip(zipBytes, BundleError, "the report bundle is damaged", (info) => {
    if (!BUNDLE_NAME.test(info.name)) return `the report contains an unexpected file: ${info.name}`;
    if (info.originalSize > MAX_ENTRY_BYTES) return "the report contains an implausibly large file";
    return null;
  });
  const missing = BUNDLE_REQUIRED.filter((n) => !(n in entries));
  if (missing.length) throw new BundleError(`the report is missing ${missing.join(", ")}`);

  let report;
  let listed;
  try {
    report = JSON.parse(decodeUtf8(entries["report.json"]));
    listed = report.photos.map((/** @type {{file: string}} */ p) => p.file);
    if (!listed.every((/** @type {unknown} */ f) => typeof f === "string")) {
      throw new TypeError("photo file names");
    }
  } catch {
    throw new BundleError("report.json is not a valid report");
  }
  const present = infos.map((i) => i.name).filter((n) => n.startsWith("photos/"));
  if (new Set(listed).size !== listed.length || !sameSet(listed, present)) {
    throw new BundleError("the photos in the report do not match report.json");
  }

  let xml;
  try {
    xml = decodeUtf8(entries["report.xml"]);
  } catch {
    throw new BundleError("report.xml is not valid UTF-8");
  }
  const photos = await Promise.all(
    listed.map(async (/** @type {string} */ file) => ({
      file,
      bytes: entries[file],
      sha256hex: await sha256hex(entries[file]),
    })),
  );
  return {
    report,
    xml,
    pdf: entries["report.pdf"],
    photos,
    signature: entries[SIGNATURE_ENTRY] ?? null,
  };
}

/**
 * @param {Uint8Array} bytes
 * @returns {Promise<string>} lowercase hex SHA-256, as the Python side prints it
 */
export async function sha256hex(bytes) {
  return toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)));
}

/**
 * Unzip with fflate, refusing duplicates and (through `check`) bad entries before inflating them.
 * fflate does not verify CRC-32; that is acceptable because both zips sit under an HMAC check.
 * @param {Uint8Array} bytes
 * @param {new (message: string) => Error} ErrorType
 * @param {string} damaged the message for an unreadable zip
 * @param {(info: ZipEntryInfo) => string | null} [check] returns an error message to refuse an entry
 * @returns {{entries: Record<string, Uint8Array>, infos: ZipEntryInfo[]}}
 */
function unzip(bytes, ErrorType, damaged, check) {
  /** @type {ZipEntryInfo[]} */
  const infos = [];
  /** @type {string | null} */
  let refusal = null;
  /** @type {Record<string, Uint8Array>} */
  let entries;
  try {
    entries = unzipSync(bytes, {
      filter(info) {
        infos.push({ ...info });
        refusal ??= check?.(info) ?? null;
        // Stop inflating as soon as anything is refused, so a hostile zip costs no work.
        return refusal === null;
      },
    });
  } catch (error) {
    throw new ErrorType(`${damaged} (${error instanceof Error ? error.message : error})`);
  }
  if (refusal !== null) throw new ErrorType(refusal);
  // fflate keeps the last of two same-named entries; a reader must not silently pick one.
  if (new Set(infos.map((i) => i.name)).size !== infos.length) {
    throw new ErrorType(`${damaged} (duplicate entries)`);
  }
  for (const info of infos) {
    if (entries[info.name].length !== info.originalSize) throw new ErrorType(`${damaged} (${info.name})`);
  }
  return { entries, infos };
}

/**
 * @param {Uint8Array} raw package.json
 * @returns {{header: Record<string, any>, wrappedKey: string | null}}
 */
function parsePackage(raw) {
  let pkg;
  try {
    pkg = JSON.parse(decodeUtf8(raw));
  } catch {
    throw new SealedFileError("the report header is not valid JSON (damaged)");
  }
  if (!isObject(pkg) || !isObject(pkg.header)) throw new SealedFileError("the report header is invalid");
  if (Object.keys(pkg).some((k) => k !== "header" && k !== "wrapped_key")) {
    throw new SealedFileError("the report header has unexpected fields");
  }
  const header = pkg.header;
  if (header.format !== FORMAT) throw new SealedFileError("not a sealed report (unknown format)");
  if (header.format_version !== 1) {
    throw new SealedFileError(`unsupported sealed report version ${header.format_version}`);
  }
  if (!Number.isSafeInteger(header.payload_size) || header.payload_size <= HMAC_SIZE) {
    throw new SealedFileError("the report header is invalid (payload_size)");
  }
  if (typeof header.payload_hmac !== "string" || !/^[0-9a-f]{64}$/.test(header.payload_hmac)) {
    throw new SealedFileError("the report header is invalid (payload_hmac)");
  }
  if (header.encryption !== "envelope" && header.encryption !== "passphrase") {
    throw new SealedFileError("the report header is invalid (encryption)");
  }
  const wrapped = pkg.wrapped_key;
  const hasKey = typeof wrapped === "string" && /^[A-Za-z0-9_-]+$/.test(wrapped);
  if ((header.encryption === "envelope") !== hasKey || (!hasKey && wrapped !== undefined)) {
    throw new SealedFileError("the wrapped key is missing or out of place");
  }
  return { header, wrappedKey: hasKey ? wrapped : null };
}

/**
 * @param {Uint8Array} bytes
 * @returns {string}
 */
function decodeUtf8(bytes) {
  // fatal: a damaged byte must be an error, not a silent U+FFFD in a clinical report.
  return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
}

/** @param {Uint8Array} bytes */
function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** @param {unknown} value */
function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * @param {string[]} a
 * @param {string[]} b
 */
function sameSet(a, b) {
  const sa = new Set(a);
  const sb = new Set(b);
  return sa.size === sb.size && [...sa].every((x) => sb.has(x));
}
