import { useMemo, useState } from 'react';

const builds = [
  { id: 3, project: 'webapp', state: 'succeeded', seconds: 41 },
  { id: 2, project: 'hello', state: 'succeeded', seconds: 3 },
  { id: 1, project: 'evil-postinstall', state: 'succeeded', seconds: 9 },
];

export default function Builds() {
  const [filter, setFilter] = useState('');
  const shown = useMemo(
    () => builds.filter((b) => b.project.includes(filter.trim().toLowerCase())),
    [filter],
  );
  return (
    <section>
      <h2>Recent builds</h2>
      <input
        aria-label="filter by project"
        placeholder="filter by project"
        value={filter}
        onChange={(e) => setFilter(e.target.value)}
      />
      <table>
        <thead>
          <tr><th>#</th><th>project</th><th>state</th><th>time</th></tr>
        </thead>
        <tbody>
          {shown.map(({ id, project, state, seconds }) => (
            <tr key={id}>
              <td>{id}</td><td>{project}</td><td>{state}</td><td>{seconds} s</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
