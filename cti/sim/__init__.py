"""The PBX simulator and the trace replayer: the demo and the tests without Asterisk.

* :mod:`cti.sim.events` - simulated calls as the AMI events Asterisk 22 sent in the lab
  (pure; templates in ``templates/lab22.json``, made by :mod:`cti.sim.make_templates`);
* :mod:`cti.sim.state` - the live channels and queues, read back from those events;
* :mod:`cti.sim.pbx` - :class:`~cti.sim.pbx.PbxSimulator`, the AMI server + FastAGI client;
* :mod:`cti.sim.replay` - :class:`~cti.sim.replay.TraceReplayer` and
  :class:`~cti.sim.replay.AgiReplayer`, recorded sessions served again.
"""
