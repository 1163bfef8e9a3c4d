export default function Home() {
  return (
    <section>
      <h2>Builds that keep their secrets</h2>
      <p>
        This page was built inside a cleanroom sandbox: every dependency came from the lockfile,
        checked against its integrity, and the build could reach nothing else.
      </p>
    </section>
  );
}
