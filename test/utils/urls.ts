/** The server the tests use; CI sets a password for TCP (see .ci/run). */
export const adminUrl = () => process.env.TEST_DATABASE_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/postgres"

export const databaseUrl = (database: string) => {
  const url = new URL(adminUrl())
  url.pathname = `/${database}`
  return url.toString()
}
