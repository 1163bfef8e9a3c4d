// follow.js — the console's only script: it follows a running job's log on
// the job page. The page works without it (reload for more). New log text
// arrives as server-sent events and is appended as text nodes, never parsed
// as HTML; the console's Content-Security-Policy allows no other script.
(function () {
  'use strict';
  var log = document.getElementById('log');
  if (!log || !log.dataset.follow || typeof EventSource === 'undefined') {
    return;
  }
  var status = document.getElementById('follow-status');
  var state = document.getElementById('job-state');
  var reason = document.getElementById('job-reason');
  function say(text) {
    if (status) {
      status.textContent = text;
    }
  }
  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  }
  say('Following the log live…');
  log.dataset.following = 'yes';
  var es = new EventSource(log.dataset.follow);
  es.addEventListener('log', function (ev) {
    var stick = atBottom();
    log.appendChild(document.createTextNode(JSON.parse(ev.data)));
    if (stick) {
      log.scrollTop = log.scrollHeight;
    }
  });
  es.addEventListener('end', function (ev) {
    es.close();
    var end = JSON.parse(ev.data);
    if (state) {
      state.textContent = end.state;
      state.className = 'state ' + end.state;
    }
    if (reason && end.reason) {
      reason.textContent = end.reason;
    }
    log.dataset.following = 'ended';
    say('The job ended: ' + end.state + '. Reload for its egress events and artifacts.');
  });
  es.onerror = function () {
    if (es.readyState === EventSource.CLOSED) {
      say('Live follow stopped: reload the page.');
    } else {
      say('Reconnecting…');
    }
  };
}());
