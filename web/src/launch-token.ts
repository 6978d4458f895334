// The operator token `mbostream run` hands to the page in its URL (`#token=…`), as Jupyter does:
// a fragment never reaches a server, so the token stays out of every access log. The page takes
// it once, keeps it in memory only (like a typed token) and drops it from the address bar, so it
// is neither bookmarked, nor shared with a copied link, nor left in the history.

const PREFIX = "#token=";

/** A URL split into the token its fragment hands over ("" when none) and the URL without it. */
export interface TokenHandover {
  readonly token: string;
  readonly url: string;
}

/** Splits `…#token=T` into T and the URL without the fragment; any other URL is returned as is. */
export function splitLaunchToken(href: string): TokenHandover {
  const url = new URL(href);
  if (!url.hash.startsWith(PREFIX)) return { token: "", url: href };
  const encoded = url.hash.slice(PREFIX.length);
  url.hash = "";
  let token: string;
  try {
    token = decodeURIComponent(encoded);
  } catch {
    token = ""; // not a token mbostream printed; it leaves the address bar all the same
  }
  return { token, url: url.href };
}

/**
 * Takes the launch token from the page's address: replaces the current history entry with the
 * address without it (no navigation, no reload) and returns the token, or "" when there is none.
 */
export function takeLaunchToken(
  location: Pick<Location, "href">,
  history: Pick<History, "replaceState" | "state">,
): string {
  const { token, url } = splitLaunchToken(location.href);
  if (url !== location.href) history.replaceState(history.state, "", url);
  return token;
}
