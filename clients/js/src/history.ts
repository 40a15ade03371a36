/** History walks: page after page, as an async iterator that visits every message once. */
import type { Message } from "./protocol.js";

/** Which messages a history walk visits. */
export interface HistoryOptions {
  /** Only messages with `seq < before`. */
  before?: number;
  /**
   * Only messages with `seq > after`. With `after` and no `before` the walk goes forward (catch
   * up: oldest first); otherwise it scrolls back (newest first).
   */
  after?: number;
  /** Messages per request, 1 to 1000 (default 50). */
  pageSize?: number;
}

/** One page request: `before`/`after`/`limit` as PROTOCOL.md's history takes them. */
export type PageFetcher = (params: {
  before?: number;
  after?: number;
  limit: number;
}) => Promise<Omit<Message, "conv">[]>;

/** Walks pages from `fetchPage` as {@link HistoryOptions} says. */
export async function* walkHistory(
  conv: string,
  fetchPage: PageFetcher,
  options: HistoryOptions = {},
): AsyncGenerator<Message, void, undefined> {
  const limit = options.pageSize ?? 50;
  if (options.after !== undefined && options.before === undefined) {
    // Catch up: each page holds the messages just after `after`, newest first.
    let after = options.after;
    for (;;) {
      const page = await fetchPage({ after, limit });
      if (page.length === 0) return;
      for (let i = page.length - 1; i >= 0; i--) yield { conv, ...page[i] };
      if (page[0].seq <= after) return; // no progress: never loop
      after = page[0].seq;
    }
  }
  let before = options.before;
  for (;;) {
    const page = await fetchPage({ before, after: options.after, limit });
    if (page.length === 0) return;
    for (const m of page) yield { conv, ...m };
    const oldest = page[page.length - 1].seq;
    if (before !== undefined && oldest >= before) return;
    before = oldest;
  }
}
