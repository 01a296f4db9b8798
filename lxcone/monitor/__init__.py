"""Monitoring: what runs on this host and how much it uses, for the onemonitord probes
(lxcone.monitor.probes) and the Prometheus exporter (exporter/). Reads the runtime's run dir,
/proc and the cgroups directly; never shells out, never imports pyroute2."""
