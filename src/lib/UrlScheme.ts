/**
 * A URL's scheme, for an error message, when it is one: `ftp` in `ftp://host/x`. Not for text
 * such as `admin:hunter2@host/x`, which `new URL` also reads as a scheme (`admin`): naming it
 * would put a user name in the message, and messages reach logs.
 */
export const nameableScheme = (raw: string, url: URL): string | undefined =>
  raw.trim().slice(url.protocol.length).startsWith("//") ? url.protocol.slice(0, -1) : undefined
