/**
 * `f` remembered per string argument, for hot paths that see the same few values again and again
 * (a destination URL, a secret). Bounded: past `limit` entries it starts afresh, so a stream of
 * distinct inputs costs one map's worth of memory, never more.
 */
export const memoizeBounded = <A>(f: (input: string) => A, limit: number): ((input: string) => A) => {
  const results = new Map<string, A>()
  return (input) => {
    let result = results.get(input)
    if (result === undefined) {
      if (results.size >= limit) results.clear()
      result = f(input)
      results.set(input, result)
    }
    return result
  }
}
