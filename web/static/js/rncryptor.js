// RNCryptor v3 in the browser, on WebCrypto only (no JS crypto code to audit or vendor).
//
//   key mode:      0x03 0x00 | IV(16) | AES-256-CBC/PKCS7 ciphertext | HMAC-SHA256(32)
//   password mode: 0x03 0x01 | enc salt(8) | HMAC salt(8) | IV(16) | ciphertext | HMAC-SHA256(32)
//
// The HMAC covers everything before it. Password keys are PBKDF2-HMAC-SHA1, 10,000 rounds, 32 bytes.
// Mirrors kiosk/sealing/rncryptor.py; the official v3 vectors pin both to the same bytes.

const VERSION = 3;
const OPTION_KEY = 0x00;
const OPTION_PASSWORD = 0x01;
const KEY_SIZE = 32;
const SALT_SIZE = 8;
const IV_SIZE = 16;
const HMAC_SIZE = 32;
const BLOCK_SIZE = 16;
// Part of the format, not a tuning knob: a different count derives different keys.
const PBKDF2_ITERATIONS = 10_000;

export const MESSAGES = Object.freeze({
  notRNCryptor: "not an RNCryptor v3 message",
  truncated: "the file is truncated",
  damaged: "the file was changed or damaged, or the key is wrong",
  needsPassword: "this message is sealed with a passphrase, not a key",
  needsKey: "this message is sealed with a key, not a passphrase",
});

/** A message that is not RNCryptor v3, is truncated, was altered, or does not match the key. */
export class RNCryptorError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "RNCryptorError";
  }
}

/**
 * @typedef {{dataKey: Uint8Array, password?: undefined}
 *   | {password: string, dataKey?: undefined}} DecryptOptions
 * @typedef {{dataKey: Uint8Array, iv?: Uint8Array}} KeyEncryptOptions
 * @typedef {{password: string, encSalt?: Uint8Array, hmacSalt?: Uint8Array, iv?: Uint8Array}}
 *   PasswordEncryptOptions
 */

/**
 * PBKDF2-HMAC-SHA1 as the spec fixes it.
 * @param {string} password UTF-8 encoded before derivation, as every RNCryptor implementation does
 * @param {Uint8Array} salt
 * @returns {Promise<Uint8Array>} 32 bytes
 */
export async function deriveKey(password, salt) {
  const secret = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(password),
    "PBKDF2",
    false,
    ["deriveBits"],
  );
  const bits = await crypto.subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-1", salt, iterations: PBKDF2_ITERATIONS },
    secret,
    KEY_SIZE * 8,
  );
  return new Uint8Array(bits);
}

/**
 * Authenticate the whole message, then decrypt it. No plaintext exists unless the HMAC is valid.
 * @param {Uint8Array} message the whole RNCryptor v3 message, header to tag
 * @param {DecryptOptions} options a 64-byte data key (AES key then HMAC key) or a password
 * @returns {Promise<Uint8Array>} the plaintext
 */
export async function decryptRNCryptor(message, { dataKey, password } = /** @type {any} */ ({})) {
  if ((dataKey === undefined) === (password === undefined)) {
    throw new TypeError("give exactly one of dataKey or password");
  }
  if (!(message instanceof Uint8Array)) throw new TypeError("message must be a Uint8Array");
  if (message.length < 2) throw new RNCryptorError(MESSAGES.truncated);
  if (message[0] !== VERSION) {
    throw new RNCryptorError(`${MESSAGES.notRNCryptor} (version byte ${message[0]})`);
  }

  let headerSize;
  if (message[1] === OPTION_PASSWORD) {
    if (password === undefined) throw new RNCryptorError(MESSAGES.needsPassword);
    headerSize = 2 + 2 * SALT_SIZE;
  } else if (message[1] === OPTION_KEY) {
    if (dataKey === undefined) throw new RNCryptorError(MESSAGES.needsKey);
    headerSize = 2;
  } else {
    throw new RNCryptorError(`${MESSAGES.notRNCryptor} (unknown options byte ${message[1]})`);
  }

  // PKCS7 always adds at least one block, so a valid body is one or more whole blocks. A cut that
  // happens to leave whole blocks cannot be told from tampering and fails the HMAC check instead.
  const bodySize = message.length - headerSize - IV_SIZE - HMAC_SIZE;
  if (bodySize < BLOCK_SIZE || bodySize % BLOCK_SIZE) throw new RNCryptorError(MESSAGES.truncated);

  const keys =
    password !== undefined
      ? await Promise.all([
          deriveKey(password, message.subarray(2, 2 + SALT_SIZE)),
          deriveKey(password, message.subarray(2 + SALT_SIZE, 2 + 2 * SALT_SIZE)),
        ])
      : splitKey(dataKey);
  const [aesKey, hmacKey] = await importKeys(keys[0], keys[1], "decrypt", "verify");

  const tagStart = message.length - HMAC_SIZE;
  // subtle.verify compares in constant time, so a forger learns nothing from timing.
  const authentic = await crypto.subtle.verify(
    "HMAC",
    hmacKey,
    message.subarray(tagStart),
    message.subarray(0, tagStart),
  );
  if (!authentic) throw new RNCryptorError(MESSAGES.damaged);

  const ivStart = headerSize;
  const iv = message.subarray(ivStart, ivStart + IV_SIZE);
  try {
    const plain = await crypto.subtle.decrypt(
      { name: "AES-CBC", iv },
      aesKey,
      message.subarray(ivStart + IV_SIZE, tagStart),
    );
    return new Uint8Array(plain);
  } catch {
    // Only reachable with a valid HMAC, i.e. the sender produced bad padding.
    throw new RNCryptorError("the message has invalid padding (the sender's software is faulty)");
  }
}

/**
 * Encrypt to an RNCryptor v3 message. IV and salts are random unless given (given only for test vectors).
 * @param {Uint8Array} plaintext
 * @param {KeyEncryptOptions | PasswordEncryptOptions} options
 * @returns {Promise<Uint8Array>} header, IV, ciphertext and HMAC
 */
export async function encryptRNCryptor(plaintext, options) {
  const { dataKey, password } = /** @type {any} */ (options);
  if ((dataKey === undefined) === (password === undefined)) {
    throw new TypeError("give exactly one of dataKey or password");
  }
  const iv = checkedLength(options.iv ?? randomBytes(IV_SIZE), IV_SIZE, "iv");
  let header, encKey, hmacKey;
  if (password !== undefined) {
    const opts = /** @type {PasswordEncryptOptions} */ (options);
    const encSalt = checkedLength(opts.encSalt ?? randomBytes(SALT_SIZE), SALT_SIZE, "encSalt");
    const hmacSalt = checkedLength(opts.hmacSalt ?? randomBytes(SALT_SIZE), SALT_SIZE, "hmacSalt");
    header = concat([Uint8Array.of(VERSION, OPTION_PASSWORD), encSalt, hmacSalt]);
    [encKey, hmacKey] = await Promise.all([deriveKey(password, encSalt), deriveKey(password, hmacSalt)]);
  } else {
    header = Uint8Array.of(VERSION, OPTION_KEY);
    [encKey, hmacKey] = splitKey(dataKey);
  }
  const [aesKey, macKey] = await importKeys(encKey, hmacKey, "encrypt", "sign");
  // WebCrypto's AES-CBC always applies PKCS7 padding, which is what RNCryptor specifies.
  const ciphertext = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-CBC", iv }, aesKey, plaintext));
  const signed = concat([header, iv, ciphertext]);
  const tag = new Uint8Array(await crypto.subtle.sign("HMAC", macKey, signed));
  return concat([signed, tag]);
}

/**
 * @param {Uint8Array} dataKey
 * @returns {[Uint8Array, Uint8Array]} the AES key and the HMAC key
 */
function splitKey(dataKey) {
  if (!(dataKey instanceof Uint8Array) || dataKey.length !== 2 * KEY_SIZE) {
    throw new TypeError("an RNCryptor data key is 64 bytes: 32 for AES, 32 for HMAC");
  }
  return [dataKey.subarray(0, KEY_SIZE), dataKey.subarray(KEY_SIZE)];
}

/**
 * Non-extractable CryptoKeys, so page script can use them but never read them back.
 * @param {Uint8Array} encKey
 * @param {Uint8Array} hmacKey
 * @param {"encrypt" | "decrypt"} aesUse
 * @param {"sign" | "verify"} hmacUse
 * @returns {Promise<[CryptoKey, CryptoKey]>}
 */
async function importKeys(encKey, hmacKey, aesUse, hmacUse) {
  return Promise.all([
    crypto.subtle.importKey("raw", encKey, { name: "AES-CBC" }, false, [aesUse]),
    crypto.subtle.importKey("raw", hmacKey, { name: "HMAC", hash: "SHA-256" }, false, [hmacUse]),
  ]);
}

/** @param {number} size */
function randomBytes(size) {
  return crypto.getRandomValues(new Uint8Array(size));
}

/**
 * @param {Uint8Array} bytes
 * @param {number} size
 * @param {string} name
 */
function checkedLength(bytes, size, name) {
  if (!(bytes instanceof Uint8Array) || bytes.length !== size) {
    throw new TypeError(`${name} must be ${size} bytes`);
  }
  return bytes;
}

/** @param {Uint8Array[]} parts */
function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
