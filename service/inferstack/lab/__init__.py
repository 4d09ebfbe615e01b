"""The lab: fresh Debian 12 hosts with systemd as PID 1 on this machine (debootstrap +
systemd-nspawn) on a private bridge, reachable over SSH, and the inventory that points at them.
``inferstack lab up|down|status``; ``ansible-playbook playbooks/site.yml`` then provisions them."""
