import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Effect, FastCheck as fc } from "effect"
import { describe, expect } from "vitest"
import { numberArray, textArray } from "../../src/queue/PgArray.js"
import { layerPg } from "../utils/TestDatabase.js"

// Text a response body or an error may hold: quotes, backslashes, braces, commas, spaces, the
// word NULL, empty strings, any Unicode, and U+0000, which PostgreSQL refuses to store.
const awkward = fc.oneof(
  fc.string({ unit: "binary" }),
  fc.string({ unit: fc.constantFrom("\"", "\\", "{", "}", ",", " ", "\u0000", "a", "é", "😀") }),
  fc.constantFrom("", "NULL", "null", " NULL ", "\"", "\\\\", "{}", "{a,b}")
)

describe("PostgreSQL array literals for the result write", () => {
  it.layer(layerPg)((it) => {
    it.effect.prop("text arrays reach PostgreSQL element for element, U+0000 as U+FFFD, null as NULL", [fc.array(fc.option(awkward, { nil: null }), { maxLength: 30 })], ([values]) =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const [row] = yield* sql.unsafe<{ v: Array<string | null> }>("SELECT $1::text[] AS v", [textArray(values)])
        expect(row!.v).toEqual(values.map((v) => (v === null ? null : v.replaceAll("\u0000", "\uFFFD"))))
      }).pipe(Effect.orDie), { fastCheck: { numRuns: 60 } })

    it.effect.prop("numbers reach PostgreSQL unchanged: float8 bit for bit, integers as integers", [fc.array(fc.option(fc.double({ noNaN: true, noDefaultInfinity: true }), { nil: null }), { maxLength: 30 }), fc.array(fc.option(fc.integer(), { nil: null }), { maxLength: 30 })], ([doubles, integers]) =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const [row] = yield* sql.unsafe<{ d: Array<number | null>; i: Array<number | null> }>(
          "SELECT $1::float8[] AS d, $2::int[] AS i",
          [numberArray(doubles), numberArray(integers)]
        )
        // 0 and -0 count as the same number here.
        expect(row!.d.map((d) => (d === 0 ? 0 : d))).toEqual(doubles.map((d) => (d === 0 ? 0 : d)))
        expect(row!.i).toEqual(integers)
      }).pipe(Effect.orDie), { fastCheck: { numRuns: 60 } })
  })
})
