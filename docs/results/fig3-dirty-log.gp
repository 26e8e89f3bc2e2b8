set terminal pngcairo size 1000,650 noenhanced
set output 'docs/results/fig3-dirty-log.png'
set datafile separator ','
set key outside right
set grid
set title "Fig. 3: vCPU cost of dirty logging per dirtied page, by mode"
set xlabel "logging mode"
set ylabel "vCPU ns per dirtied page"
set logscale y
set style fill solid 0.8
set boxwidth 0.7
set xtics rotate by -30
set offsets 0.5, 0.5, 0, 0
plot 'docs/results/fig3-dirty-log.csv' every ::1 using 0:((strcol(1) eq "dirty-log") ? $27 : 1/0):xtic(12) with boxes title "dirty-log", \
     'docs/results/fig3-dirty-log.csv' every ::1 using 0:((strcol(1) eq "dirty-log-kvm") ? $27 : 1/0):xtic(12) with boxes title "dirty-log-kvm"
