import { NavLink, Route, Routes } from 'react-router-dom';
import Builds from './pages/Builds';
import Home from './pages/Home';

export default function App() {
  return (
    <div className="app">
      <header>
        <h1>cleanroom</h1>
        <nav>
          <NavLink to="/">Home</NavLink>
          <NavLink to="/builds">Builds</NavLink>
        </nav>
      </header>
      <main>
        <Routes>
          <Route path="/" element={<Home />} />
          <Route path="/builds" element={<Builds />} />
        </Routes>
      </main>
    </div>
  );
}
